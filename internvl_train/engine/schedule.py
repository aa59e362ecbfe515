"""Learning-rate schedule as a pure function of the optimizer step.

The trainer writes the value into every optimizer group before each step (times the group's multiplier),
so a resumed run needs no scheduler state to continue exactly.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, MutableMapping


def lr_at(step: int, *, base_lr: float, warmup_steps: int, max_steps: int, schedule: str,
          min_lr_ratio: float) -> float:
    """Learning rate of 0-based optimizer step `step`: linear warmup, then cosine decay to
    base_lr * min_lr_ratio at the last step, or constant."""
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"trainer.schedule={schedule!r}: expected 'cosine' or 'constant'")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, max_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def trainer_lr_at(step: int, trainer_cfg: Any) -> float:
    return lr_at(step, base_lr=trainer_cfg.lr, warmup_steps=trainer_cfg.warmup_steps,
                 max_steps=trainer_cfg.max_steps, schedule=trainer_cfg.schedule,
                 min_lr_ratio=trainer_cfg.min_lr_ratio)


def apply_lr(param_groups: Iterable[MutableMapping[str, Any]], lr: float) -> None:
    """Set each group's lr to the scheduled value times its multiplier (default 1)."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
