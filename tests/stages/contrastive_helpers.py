"""Helpers of the stage-1 tests: tiny composed configs and a fixed global batch from the demo data."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig

from generative_helpers import compose_run, small_heldout_csv


def stage1_overrides(root: Path, extra: Sequence[str] = ()) -> list[str]:
    eval_csv = small_heldout_csv(root / "eval")
    return ["stage=contrastive", f"run_dir={root / 'run'}", "logger=none", "trainer.max_steps=3",
            "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.save_every=0", "trainer.warmup_steps=0",
            "trainer.progress_bar=off", "data.num_workers=0",
            f"data.eval_sets=[{{name: small, csv: {eval_csv}, batch_size: 8}}]", *extra]


def stage1_cfg(root: Path, *extra: str) -> DictConfig:
    return compose_run(stage1_overrides(root, extra))


def fixed_global_batch(root: Path, n: int = 8) -> dict:
    """The first `n` held-out demo samples as one batch (pixel_values, captions, keys, labels)."""
    from data_pipelines.config import EvalSetConfig
    from data_pipelines.eval_sets import build_pair_eval_set

    eval_set = build_pair_eval_set(EvalSetConfig(name="fixed", csv=str(small_heldout_csv(root / "eval")),
                                                 batch_size=n), image_size=64)
    return next(iter(eval_set))


def slice_batch(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def flat_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
