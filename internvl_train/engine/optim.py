"""Optimizer construction: our own AdamW parameter groups (passed to DeepSpeed, which keeps them).

No weight decay for norms, biases, scalars and other 1-d parameters (ndim < 2), learnable query tokens,
and whatever the stage adds; per-prefix lr multipliers. Under ZeRO-3 parameters are already partitioned
when this runs, so shapes are read from DeepSpeed's `ds_shape`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from internvl_train.engine.collectives import any_rank

NO_DECAY_NAME_PARTS = ("query_tokens",)


def full_ndim(param: nn.Parameter) -> int:
    """The parameter's true rank (a ZeRO-3 partitioned parameter is a flat 0-size placeholder)."""
    shape = getattr(param, "ds_shape", None)
    return len(shape) if shape is not None else param.ndim


def takes_weight_decay(name: str, param: nn.Parameter, extra_no_decay: Callable[[str, nn.Parameter], bool]) -> bool:
    if full_ndim(param) < 2 or name.endswith(".bias") or name == "bias":
        return False
    if any(part in name for part in NO_DECAY_NAME_PARTS):
        return False
    return not extra_no_decay(name, param)


def lr_multiplier(name: str, multipliers: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix of `name` listed in `multipliers` (1.0 when none)."""
    matches = [prefix for prefix in multipliers if name.startswith(prefix)]
    return float(multipliers[max(matches, key=len)]) if matches else 1.0


def build_param_groups(model: nn.Module, weight_decay: float, multipliers: Mapping[str, float],
                       extra_no_decay: Callable[[str, nn.Parameter], bool]) -> list[dict[str, Any]]:
    """One group per (decay?, lr multiplier); only parameters that require grad."""
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = takes_weight_decay(name, param, extra_no_decay)
        mult = lr_multiplier(name, multipliers)
        group = groups.setdefault((decay, mult), {
            "name": f"{'decay' if decay else 'no_decay'}_x{mult:g}", "params": [], "member_names": [],
            "weight_decay": weight_decay if decay else 0.0, "lr_mult": mult})
        group["params"].append(param)
        group["member_names"].append(name)
    if not groups:
        raise ValueError("the stage left no trainable parameter: check the stage's freeze options")
    return list(groups.values())


class GuardedAdamW(torch.optim.AdamW):
    """AdamW for ZeRO-0/fp32, where DeepSpeed has no overflow check: a step whose gradients are
    non-finite on any rank is skipped before any parameter or moment changes. Clips like DeepSpeed
    would and exposes `overflow` / `_global_grad_norm`, the attributes DeepSpeed's engine reads to
    count skipped steps and report the gradient norm."""

    def __init__(self, params: Any, *, max_grad_norm: float, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.overflow = False
        self._global_grad_norm: float | None = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
            if grads else torch.zeros(())
        self._global_grad_norm = float(norm)
        self.overflow = any_rank(not math.isfinite(self._global_grad_norm))
        if self.overflow:
            return None
        if self.max_grad_norm > 0 and self._global_grad_norm > self.max_grad_norm:
            scale = self.max_grad_norm / (self._global_grad_norm + 1e-6)
            for g in grads:
                g.mul_(scale)
        return super().step(closure)


def build_optimizer(groups: list[dict[str, Any]], trainer_cfg: Any, ds_cfg: Any) -> torch.optim.Optimizer:
    """DeepSpeed's CPU Adam when the optimizer is offloaded, else AdamW (guarded when DeepSpeed won't)."""
    common = dict(lr=trainer_cfg.lr, betas=tuple(trainer_cfg.betas), eps=trainer_cfg.eps,
                  weight_decay=trainer_cfg.weight_decay)
    if ds_cfg.offload_optimizer == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **common)
    if ds_cfg.zero_stage == 0 and trainer_cfg.precision != "bf16":
        return GuardedAdamW(groups, max_grad_norm=trainer_cfg.grad_clip, **common)
    return torch.optim.AdamW(groups, **common)
