"""Image-text matching (ITM): negative sampling from the global batch, and the 2-class loss.

Hard negatives follow BLIP-2: for each local image, draw one text of the global batch with probability
softmax(similarity) (and symmetrically an image for each local text). Done better than LAVIS:
- fp32 softmax plus an epsilon on the allowed candidates: extreme (1e4, -1e4, inf) or bf16 similarities
  never give NaN, all-equal rows become uniform; no torch.multinomial (it rejects fp16 / zero rows);
- excluded: the positive itself and, when ids are given, every candidate with the same image id or the
  same caption id (duplicates are not negatives);
- a row with no allowed candidate (a global batch of one) gets no negative and is counted, never a crash;
- the draw uses one uniform number per GLOBAL row from `generator`: seeded identically on every rank, the
  chosen negatives do not depend on how the batch is split over ranks.
`mode="random"` draws uniformly among the allowed candidates (the official InternVL retrieval fine-tuning).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from internvl_train.losses.labels import IGNORE_INDEX

HARD_NEGATIVE_EPS = 1e-4  # BLIP-2's additive epsilon on the softmax weights


@dataclass
class ItmNegatives:
    """Indices into the global batch; `*_rows` are the global rows of the local samples that got one."""

    text_for_image: torch.Tensor  # [M] negative text index for each image in image_rows
    image_rows: torch.Tensor  # [M] global row of those images
    image_for_text: torch.Tensor  # [M'] negative image index for each text in text_rows
    text_rows: torch.Tensor  # [M'] global row of those texts
    skipped: int  # local samples x directions without any allowed negative


def _allowed(local_rows: torch.Tensor, n_global: int, ids: list[torch.Tensor | None]) -> torch.Tensor:
    """[B, N] True where candidate column c may be a negative for local row r."""
    cols = torch.arange(n_global, device=local_rows.device)
    allowed = cols[None, :] != local_rows[:, None]
    for id_ in ids:
        if id_ is not None:
            allowed &= id_[None, :] != id_[local_rows][:, None]
    return allowed


def _draw(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw per row; weights >= 0 with a positive sum. (1 - u) in (0, 1] never picks a zero."""
    cdf = weights.cumsum(dim=1)
    target = (1.0 - uniforms)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(1).clamp_(max=weights.shape[1] - 1)


def _sample_direction(
    sim: torch.Tensor, allowed: torch.Tensor, uniforms: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen column per valid row, valid-row mask)."""
    valid = allowed.any(dim=1)
    if mode == "hard":
        logits = torch.nan_to_num(sim.detach().float(), nan=0.0, posinf=1e30, neginf=-1e30)
        probs = F.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1).nan_to_num_(0.0)
        weights = (probs + HARD_NEGATIVE_EPS) * allowed
    else:
        weights = allowed.float()
    chosen = _draw(weights[valid], uniforms[valid])
    return chosen, valid


def sample_itm_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    local_rows: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    text_ids: torch.Tensor | None = None,
    mode: Literal["hard", "random"] = "hard",
    generator: torch.Generator | None = None,
) -> ItmNegatives:
    """Sample one negative text per local image and one negative image per local text.

    sim_i2t: [B, N] similarity of the local images to all N texts of the global batch (sim_t2i: local texts
        to all images); typically logit_scale * image_emb @ all_text_emb.T. Any dtype.
    local_rows: [B] global row of each local sample (rank * B + arange(B) for equal per-rank batches).
    image_ids, text_ids: optional [N] global ids; equal ids mark duplicates that are never negatives.
    generator: draws N uniforms per direction; seed it identically on every rank (e.g. base seed + step) for
        rank-count-invariant negatives.
    """
    if mode not in ("hard", "random"):
        raise ValueError(f"sample_itm_negatives: mode must be 'hard' or 'random', got {mode!r}.")
    n_global = sim_i2t.shape[1]
    if sim_i2t.shape != sim_t2i.shape or sim_i2t.shape[0] != local_rows.numel():
        raise ValueError(
            f"sample_itm_negatives: sim_i2t {tuple(sim_i2t.shape)}, sim_t2i {tuple(sim_t2i.shape)} and "
            f"local_rows ({local_rows.numel()}) must be [B, N], [B, N] and [B]."
        )
    allowed = _allowed(local_rows.to(sim_i2t.device), n_global, [image_ids, text_ids])
    uniforms = torch.rand(2, n_global, generator=generator, device="cpu").to(sim_i2t.device)
    rows = local_rows.to(sim_i2t.device)
    text_idx, img_valid = _sample_direction(sim_i2t, allowed, uniforms[0][rows], mode)
    image_idx, txt_valid = _sample_direction(sim_t2i, allowed, uniforms[1][rows], mode)
    skipped = int((~img_valid).sum() + (~txt_valid).sum())
    return ItmNegatives(text_idx, rows[img_valid], image_idx, rows[txt_valid], skipped)


@dataclass
class ItmOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor  # fraction of pairs classified correctly (detached)
    n_negatives: int
    skipped: int


ItmLogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def itm_loss(itm_logits: ItmLogitsFn, local_rows: torch.Tensor, negatives: ItmNegatives,
             ignore_text: torch.Tensor | None = None) -> ItmOutput:
    """Two-class cross-entropy on [positives, image -> negative text, negative image -> text] (BLIP-2 order).

    itm_logits(image_index, text_index) -> [M, 2] logits (class 1 = match) for the pairs of global-batch rows;
    the stage gathers what it needs (ViT tokens, token ids) from the global batch.
    ignore_text: optional [N] bool over the global batch's texts; a pair whose text is marked has no target
    (stage 2's empty texts, as the official InternVL-G forward) and is left out of the mean and the accuracy.
    When this rank has no negative at all (global batch of one), or every pair is ignored, the loss is
    0 * logits (graph kept, so every rank runs the same backward) and `skipped` says why: log it.
    """
    image_index = torch.cat([local_rows, negatives.image_rows, negatives.image_for_text])
    text_index = torch.cat([local_rows, negatives.text_for_image, negatives.text_rows])
    n_neg = image_index.numel() - local_rows.numel()
    logits = itm_logits(image_index, text_index).float()
    labels = torch.zeros(image_index.numel(), dtype=torch.long, device=logits.device)
    labels[: local_rows.numel()] = 1
    kept = torch.ones_like(labels, dtype=torch.bool)
    if ignore_text is not None:
        kept = ~ignore_text.to(logits.device)[text_index]
    correct = (logits.argmax(dim=1) == labels)[kept].float()
    accuracy = (correct.mean() if correct.numel() else logits.new_zeros(())).detach()
    trains = n_neg > 0 and bool(kept.any())
    loss = F.cross_entropy(logits, labels.masked_fill(~kept, IGNORE_INDEX)) if trains else logits.sum() * 0.0
    return ItmOutput(loss, accuracy, n_neg, negatives.skipped)
