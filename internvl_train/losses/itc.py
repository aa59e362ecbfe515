"""Image-text contrastive loss (ITC) on open_clip's ClipLoss, and the temperature helpers.

Gradient semantics (checked by tests/losses/test_itc_distributed.py on 2 real gloo ranks):
`ClipLoss(local_loss=True, gather_with_grad=True)` makes rank r compute
    loss_r = CE over its own B rows against the gathered N = W*B columns (both directions, halved).
The single-process loss on the global batch is L = (1/W) * sum_r loss_r. The gather's backward is a
SUM reduce-scatter, so the gradient arriving at rank r's own features is d(sum_r' loss_r')/d f_r = W dL/df_r.
The engine (DeepSpeed or DDP) then AVERAGES parameter gradients over ranks:
    (1/W) * sum_r W dL/dtheta|through f_r = dL/dtheta,
and for the replicated logit_scale (1/W) * sum_r dloss_r/ds = dL/ds. So after the engine's averaging the
gradient equals a single process on the global batch, with logits memory B x N per rank (linear in N).
Do NOT divide or multiply the loss by the world size.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from internvl_train.losses.labels import IGNORE_INDEX

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: temperature never below 1/100
INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP / InternVL initial log-scale


def build_clip_loss(rank: int = 0, world_size: int = 1) -> ClipLoss:
    """ClipLoss with the exact-gradient, linear-memory setting (see the module docstring)."""
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=False, rank=rank, world_size=world_size)


def itc_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    ignore: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch; inputs are this rank's L2-normalised embeddings [B, D]
    and the multiplier exp(log_scale). Computed in fp32 (bf16 logits lose the softmax tail).

    `ignore` [B] bool: local rows without a target in either direction (stage 2's empty texts, as the
    official InternVL-G forward); they stay in the gathered columns as negatives, and the mean runs over the
    rows kept. A rank whose rows are all ignored returns 0 * logits (the graph stays: every rank runs the
    same backward)."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(
            f"itc_loss: image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must both be "
            "[batch, dim] with the same shape (one caption per image in a training batch)."
        )
    loss_fn = build_clip_loss(rank, world_size)
    per_image, per_text = loss_fn.get_logits(image_emb.float(), text_emb.float(), logit_scale.float())
    targets = loss_fn.get_ground_truth(per_image.device, per_image.shape[0])
    if ignore is not None:
        if bool(ignore.all()):
            return (per_image.sum() + per_text.sum()) * 0.0
        targets = targets.masked_fill(ignore.to(targets.device), IGNORE_INDEX)
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2


def scaled_logit_scale(log_scale: torch.Tensor, max_value: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """exp(clamp(log_scale, 0, max_value)): the multiplier to pass to the loss.

    Clamping in the forward is the mixed-precision-safe form: with DeepSpeed bf16/fp16 the optimizer holds
    an fp32 master copy, so clamping the module parameter in place alone is undone by the next step."""
    return log_scale.float().clamp(0.0, max_value).exp()


@torch.no_grad()
def clamp_logit_scale_(param: torch.nn.Parameter, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Clamp a learned log-scale parameter to [0, max_value] in place, after an optimizer step.

    Also clamps DeepSpeed's fp32 master copy when the parameter is managed by a DeepSpeed optimizer
    (ZeRO 1-3 / bf16 optimizer). Under ZeRO-3 this gathers the parameter: call it on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    master = safe_get_full_fp32_param(param)
    if master is not None:
        safe_set_full_fp32_param(param, master.clamp(0.0, max_value))
    if hasattr(param, "ds_id"):  # ZeRO-3: the module tensor is a partition placeholder
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            param.data.clamp_(0.0, max_value)
    else:
        param.data.clamp_(0.0, max_value)
