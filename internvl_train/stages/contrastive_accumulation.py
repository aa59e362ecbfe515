"""Contrastive-correct gradient accumulation (the GradCache algorithm, exact across ranks).

A contrastive loss does not decompose over micro-batches: every sample is a negative for every other sample
of the optimizer step. Summing per-micro-batch ITC losses trains with a batch k times smaller than the one
configured. This module computes the gradient of ITC over the whole step batch (k micro-batches x W ranks)
with the activation memory of one micro-batch:

1. Cache pass: encode every micro-batch without autograd; save the RNG state before each one.
2. Cache gradient: treat the cached embeddings (and the logit scale) as leaves, evaluate open_clip's
   ClipLoss(local_loss, gather_with_grad) on them (one all-gather of the cached embeddings, one reduce-scatter
   in its backward) and take the gradient of the loss w.r.t. this rank's embeddings and the scale.
3. Replay: for each micro-batch restore its RNG state (same dropout / drop-path masks as in step 1), encode it
   again with autograd and back-propagate the surrogate <live_embeddings, cached_gradient>. Its parameter
   gradient is exactly the chain-rule term of that micro-batch; the k backwards sum to d(loss)/d(theta).
   (Evaluating "the loss against the cache with the own slice live" gives the same gradient only if all N
   rows are recomputed, O(N^2) per micro-step; the surrogate needs O(B*D).)

Scaling: as for ClipLoss itself, the engine must AVERAGE gradients over ranks (DDP and DeepSpeed do). If the
backward you pass divides each loss by the accumulation steps (DeepSpeed's engine.backward does, by
gradient_accumulation_steps), pass that factor as `backward_divisor`: the surrogate is multiplied by it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from internvl_train.engine.collectives import all_reduce_sum, check_same_size_on_all_ranks
from internvl_train.losses.itc import build_clip_loss

Embeddings = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image [B,D], text [B,D], logit scale (exp'd)
EncodeFn = Callable[[nn.Module, Mapping[str, Any]], Embeddings]
BackwardFn = Callable[[torch.Tensor, bool], None]
ExtraLossFn = Callable[[Mapping[str, Any], Embeddings, "CachedEmbeddings"], dict[str, torch.Tensor]]


@dataclass
class CachedEmbeddings:
    """The step's embeddings without gradient: this rank's rows and where its micro-batches sit."""

    image: torch.Tensor  # [kB, D] this rank, micro-batches concatenated in order
    text: torch.Tensor
    logit_scale: torch.Tensor
    offsets: list[int]  # row offset of each micro-batch inside `image` / `text`


class RngState:
    """CPU (and current CUDA device) generator state, captured and restored to replay dropout exactly."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda)


def _cache_pass(
    model: nn.Module, micro_batches: Sequence[Mapping[str, Any]], encode: EncodeFn
) -> tuple[CachedEmbeddings, list[RngState]]:
    images, texts, states, offsets = [], [], [], []
    scale = None
    row = 0
    with torch.no_grad():
        for batch in micro_batches:
            states.append(RngState())
            image, text, scale = encode(model, batch)[:3]
            images.append(image.detach().float())
            texts.append(text.detach().float())
            offsets.append(row)
            row += image.shape[0]
    cache = CachedEmbeddings(torch.cat(images), torch.cat(texts), scale.detach().float(), offsets)
    return cache, states


def _cache_gradients(
    cache: CachedEmbeddings, rank: int, world_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(this rank's loss term, dL/d image, dL/d text, dL/d scale) with ClipLoss's rank semantics."""
    image = cache.image.clone().requires_grad_(True)
    text = cache.text.clone().requires_grad_(True)
    scale = cache.logit_scale.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = build_clip_loss(rank, world_size)(image, text, scale)
        g_image, g_text, g_scale = torch.autograd.grad(loss, [image, text, scale])
    return loss.detach(), g_image, g_text, g_scale


def _surrogate(live: Embeddings, cache_grads: tuple[torch.Tensor, ...], rows: slice, n_micro: int) -> torch.Tensor:
    """A scalar whose gradient w.r.t. the live embeddings is the cached gradient of the full-step loss."""
    image, text, scale = live[:3]
    g_image, g_text, g_scale = cache_grads
    out = (image.float() * g_image[rows]).sum() + (text.float() * g_text[rows]).sum()
    if scale.requires_grad:  # the scale's gradient is spread evenly over the k replays
        out = out + scale.float().sum() * (g_scale / n_micro)
    return out


def contrastive_accumulation_step(
    model: nn.Module,
    micro_batches: Sequence[Mapping[str, Any]],
    encode: EncodeFn,
    backward: BackwardFn,
    rank: int = 0,
    world_size: int = 1,
    backward_divisor: float = 1.0,
    extra_losses: ExtraLossFn | None = None,
    extra_weights: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Back-propagate the exact ITC gradient of the whole step (all micro-batches of all ranks).

    encode(model, batch) -> (image_emb, text_emb, logit_scale): L2-normalised [B, D] embeddings and the
        multiplier exp(log_scale); it must be deterministic given the RNG state (dropout is replayed).
    backward(loss, is_last): called once per micro-batch, in order; is_last marks the accumulation boundary
        (route to engine.backward(loss); engine.step(), or skip DDP's gradient sync unless is_last).
    backward_divisor: the factor `backward` divides each loss by (DeepSpeed: gradient_accumulation_steps).
    extra_losses(batch, live_embeddings, cache) -> named per-sample losses of this micro-batch (ITM, ITG);
        they are averaged over micro-batches and back-propagated with the replay, each times its
        `extra_weights` entry (default 1). `encode` may return more than the three embeddings (e.g. the text
        tower's LM logits): extra_losses receives the whole tuple.
    Returns detached losses: 'itc' equals the single-process loss on the global step batch (identical on every
    rank), extra losses averaged over micro-batches (this rank), and 'loss' their sum.
    """
    if not micro_batches:
        raise ValueError("contrastive_accumulation_step: micro_batches is empty; pass at least one micro-batch.")
    cache, rng_states = _cache_pass(model, micro_batches, encode)
    check_same_size_on_all_ranks(cache.image.shape[0], "contrastive_accumulation_step", cache.image.device)
    local_loss, *cache_grads = _cache_gradients(cache, rank, world_size)
    k = len(micro_batches)
    weights = dict(extra_weights or {})
    extras: dict[str, torch.Tensor] = {}
    resume_state = RngState()
    for j, batch in enumerate(micro_batches):
        rng_states[j].restore()
        live = encode(model, batch)
        rows = slice(cache.offsets[j], cache.offsets[j] + live[0].shape[0])
        total = _surrogate(live, tuple(cache_grads), rows, k)
        for name, value in (extra_losses(batch, live, cache) if extra_losses else {}).items():
            total = total + weights.get(name, 1.0) * value / k
            extras[name] = extras.get(name, 0.0) + value.detach().float() / k
        backward(total * backward_divisor, j == k - 1)
    resume_state.restore()  # the step consumes the RNG once, as a plain step would
    itc = all_reduce_sum(local_loss) / world_size  # sum_r loss_r / W == single-process loss
    losses = {"itc": itc, **extras}
    losses["loss"] = itc + sum(weights.get(name, 1.0) * value for name, value in extras.items())
    return losses
