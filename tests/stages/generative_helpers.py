"""Helpers of the stage-2 tests: composed configs, a stage-1 export made by the real stage-1 export code, and
a 16-image held-out CSV cut from the demo data (evaluation in seconds)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from internvl_train.app import CONFIG_DIR
from internvl_train.config import register_configs

EVAL_IMAGES = 16


def compose_run(overrides: Sequence[str]) -> DictConfig:
    """The root config exactly as `python -m internvl_train <overrides>` composes it."""
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def small_heldout_csv(folder: Path, n: int = EVAL_IMAGES) -> Path:
    """A CSV eval set (image, caption, label) of the first `n` held-out demo images."""
    from data_pipelines.demo import ensure_demo_data

    paths = ensure_demo_data()
    rows = [json.loads(line) for line in open(paths.attributes_file)]
    rows = [r for r in rows if r["split"] == "heldout"][:n]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "heldout.csv"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for r in rows:
            writer.writerow([os.path.join(paths.image_dir, r["image"]), r["caption"], r["label"]])
    return out


def stage2_overrides(root: Path, export: Path, extra: Sequence[str] = ()) -> list[str]:
    """A tiny, fast stage-2 run on the demo data with the small held-out CSV."""
    eval_csv = small_heldout_csv(root / "eval")
    return ["stage=generative", f"init_from={export}", f"run_dir={root / 'run'}", "logger=none",
            "trainer.max_steps=3", "trainer.micro_batch_size=4", "trainer.log_every=1", "trainer.save_every=0",
            "trainer.warmup_steps=0", "trainer.progress_bar=off", "data.num_workers=0",
            f"data.eval_sets=[{{name: small, csv: {eval_csv}, batch_size: 8}}]",
            "stage.caption_eval_images=8", "stage.caption_max_new_tokens=4", "stage.itm_rerank_k=3", *extra]


def make_stage1_export(folder: Path) -> Path:
    """A stage-1 result written by ContrastiveStage.export (random tiny InternVL-C: training is not the
    point here, the export format is)."""
    import torch

    from internvl_train.engine.stage_api import DistInfo
    from internvl_train.stages.contrastive import ContrastiveStage

    cfg = compose_run(["stage=contrastive", f"run_dir={folder}"])
    stage = ContrastiveStage(cfg, DistInfo())
    torch.manual_seed(1)
    export = folder / "export"
    stage.export(stage.build_model(), str(export))
    return export
