"""Shared helpers for the engine tests: read run outputs back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss/loss"] for r in metric_rows(run_dir) if "loss/loss" in r}


def grad_norms_by_step(run_dir: Path) -> dict[int, float]:
    """The pre-clip global gradient norm the engine logged at each step."""
    return {r["step"]: r["train/grad_norm"] for r in metric_rows(run_dir) if "train/grad_norm" in r}


def exported(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "export" / "model.pt")


def tensor_leaves(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor inside nested dicts/lists, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(tensor_leaves(value, f"{prefix}/{key}"))
    return out


def optimizer_tensors(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Optimizer-state tensors of a DeepSpeed checkpoint (ZeRO-0 model file or ZeRO optim files)."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted((checkpoint_dir / "engine").glob("*.pt")):
        state = torch.load(f, weights_only=False)
        for key in ("optimizer", "optimizer_state_dict"):
            if key in state and state[key] is not None:
                out.update(tensor_leaves(state[key], f"{f.name}/{key}"))
    return out


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
