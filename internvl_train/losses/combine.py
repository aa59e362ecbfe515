"""Named losses -> the dict a stage returns: every term (detached copies are the caller's job) plus 'loss'."""
from __future__ import annotations

from typing import Mapping

import torch


def combine_losses(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """{name: loss, ..., 'loss': sum(weight[name] * loss)}; a missing weight is 1 (stage 2: equal weights).

    A weight naming no loss is an error (a typo in the config would otherwise silently drop a term)."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(losses))
    if unknown:
        raise KeyError(f"combine_losses: weights for unknown losses {unknown}; losses are {sorted(losses)}.")
    if "loss" in losses:
        raise KeyError("combine_losses: 'loss' is reserved for the weighted total; rename that term.")
    if not losses:
        raise ValueError("combine_losses: no losses given.")
    out = dict(losses)
    out["loss"] = sum(weights.get(name, 1.0) * value for name, value in losses.items())
    return out
