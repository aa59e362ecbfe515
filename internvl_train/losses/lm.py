"""Stage-3 next-token loss with per-token weights, identical for packed and unpacked batches.

The data pipeline supplies `loss_weights` [B, T] aligned with `labels` (the weight of the token at that
label position): InternVL's loss reductions `token` (1), `sample` (1/n) and `square` (1/sqrt(n)), n = the
sample's supervised tokens; `token_loss_weights` builds them for a batch, `sample_loss_weights` for one sample
(the SFT collator), both from `reduction_scale`. The loss is sum(w * CE) / sum(w) over the
supervised targets. With `position_ids` (packing resets them to 0 at each sample start) the first token of a
sample is never a target of the previous sample's last logit, so a packed row gives exactly the loss of its
samples laid out in separate rows.
"""
from __future__ import annotations

from typing import Literal

import torch

from .itg import next_token_ce
from .labels import IGNORE_INDEX, LOSS_REDUCTIONS

Reduction = Literal["token", "sample", "square"]


def _targets(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Labels of the shifted targets [B, T-1] with sample starts of packed rows ignored."""
    targets = labels[:, 1:].clone()
    if position_ids is not None:
        targets[position_ids[:, 1:] == 0] = IGNORE_INDEX
    return targets


def lm_loss_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of w * CE, sum of w) over supervised targets: all-reduce both to normalise over ranks."""
    targets = _targets(labels, position_ids)
    ce = next_token_ce(logits, torch.cat([labels[:, :1], targets], dim=1), reduction="none")
    weights = torch.ones_like(targets, dtype=torch.float32) if loss_weights is None else loss_weights[:, 1:].float()
    weights = weights.reshape(-1) * (targets.reshape(-1) != IGNORE_INDEX)
    return (ce * weights).sum(), weights.sum()


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean next-token loss of the micro-batch. Raises when no token is supervised."""
    total, weight = lm_loss_terms(logits, labels, loss_weights, position_ids)
    if weight.item() <= 0:
        raise ValueError(
            "lm_loss: no supervised token in the batch (labels all -100 or zero weights); a template or "
            "truncation problem upstream, not a zero loss."
        )
    return total / weight


def token_loss_weights(
    labels: torch.Tensor, reduction: Reduction, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, T] weights for InternVL's loss reductions; samples are delimited by position_ids resets."""
    _check_reduction(reduction)
    targets = torch.cat([torch.full_like(labels[:, :1], IGNORE_INDEX), _targets(labels, position_ids)], dim=1)
    starts = torch.zeros_like(labels, dtype=torch.bool)
    starts[:, 0] = True
    if position_ids is not None:
        starts |= position_ids == 0
    sample_id = starts.reshape(-1).cumsum(0) - 1  # one id per sample over the flattened batch
    supervised = (targets.reshape(-1) != IGNORE_INDEX).float()
    counts = torch.zeros(int(sample_id[-1]) + 1, device=labels.device)
    counts = counts.index_add_(0, sample_id, supervised).clamp_(min=1)
    return reduction_scale(counts, reduction)[sample_id].reshape(labels.shape)


def sample_loss_weights(labels: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """[n] weights of one sample's labels: its reduction scale where supervised, 0 where ignored."""
    _check_reduction(reduction)
    supervised = labels != IGNORE_INDEX
    count = supervised.sum().float().clamp(min=1).reshape(1)
    return supervised.float() * reduction_scale(count, reduction)


def reduction_scale(counts: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Per-sample token weight from the samples' supervised-token counts (>= 1): token 1, sample 1/n,
    square 1/sqrt(n) (InternVL's loss_reduction)."""
    return {"token": torch.ones_like(counts), "sample": 1 / counts, "square": counts.rsqrt()}[reduction]


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}.")
