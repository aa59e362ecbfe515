"""Image <-> text retrieval recall (R@1/5/10 and their mean), computed in chunks.

Only a [chunk, N] block of similarities exists at a time. Several captions per image are supported through
`text_to_image` (row of each caption's image). Ties are counted AGAINST the query (a collapsed model whose
embeddings are all equal scores 0, not 100).
"""
from __future__ import annotations

from typing import Sequence

import torch

from internvl_train.losses.collectives import all_gather_cat_uneven


def _ranks_image_to_text(image: torch.Tensor, text: torch.Tensor, text_to_image: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per image: number of non-matching captions scoring >= its best matching caption."""
    ranks = []
    for start in range(0, image.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, image.shape[0]), device=image.device)
        scores = image[rows].float() @ text.float().T  # [chunk, N_txt]
        positive = text_to_image[None, :] == rows[:, None]
        best_positive = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append(((scores >= best_positive) & ~positive).sum(dim=1))
    return torch.cat(ranks)


def _ranks_text_to_image(image: torch.Tensor, text: torch.Tensor, text_to_image: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per caption: number of other images scoring >= its own image."""
    ranks = []
    for start in range(0, text.shape[0], chunk):
        rows = slice(start, min(start + chunk, text.shape[0]))
        scores = text[rows].float() @ image.float().T  # [chunk, N_img]
        own = text_to_image[rows]
        own_score = scores.gather(1, own[:, None])
        others = torch.ones_like(scores, dtype=torch.bool).scatter_(1, own[:, None], False)
        ranks.append(((scores >= own_score) & others).sum(dim=1))
    return torch.cat(ranks)


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k in percent: {'i2t_R@1', ..., 't2i_R@10', 'i2t_mean', 't2i_mean', 'mean_recall'}.

    image_emb [N_img, D], text_emb [N_txt, D] (normalised, so dot = cosine); text_to_image [N_txt] row of
    each caption's image. Every image needs at least one caption."""
    text_to_image = text_to_image.to(image_emb.device).long()
    if text_to_image.shape != (text_emb.shape[0],) or text_to_image.min() < 0 or text_to_image.max() >= image_emb.shape[0]:
        raise ValueError(
            f"retrieval_metrics: text_to_image must be [N_txt={text_emb.shape[0]}] row indices into image_emb "
            f"(0..{image_emb.shape[0] - 1}), got shape {tuple(text_to_image.shape)}."
        )
    if torch.bincount(text_to_image, minlength=image_emb.shape[0]).min() == 0:
        raise ValueError("retrieval_metrics: some images have no caption; drop them or add their captions.")
    i2t = _ranks_image_to_text(image_emb, text_emb, text_to_image, chunk_size)
    t2i = _ranks_text_to_image(image_emb, text_emb, text_to_image, chunk_size)
    out: dict[str, float] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * (ranks < k).float().mean().item()
        out[f"{name}_mean"] = sum(out[f"{name}_R@{k}"] for k in ks) / len(ks)
    out["mean_recall"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    return out


def gather_retrieval_inputs(
    image_emb: torch.Tensor, image_ids: torch.Tensor, text_emb: torch.Tensor, text_image_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each rank's shard (sizes may differ) and map caption image ids to image rows.

    Images seen twice (a sampler padding the last shard) are kept once; returns
    (image_emb, text_emb, text_to_image) ready for retrieval_metrics, identical on every rank."""
    images = all_gather_cat_uneven(image_emb)
    ids = all_gather_cat_uneven(image_ids.long())
    texts = all_gather_cat_uneven(text_emb)
    text_ids = all_gather_cat_uneven(text_image_ids.long())
    unique_ids, first = _first_occurrence(ids)
    missing = ~torch.isin(text_ids, unique_ids)
    if missing.any():
        raise ValueError(f"gather_retrieval_inputs: captions refer to image ids never embedded: {text_ids[missing][:5].tolist()}")
    return images[first], texts, torch.searchsorted(unique_ids, text_ids)


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique ids, index of the first row holding each)."""
    unique_ids, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique_ids.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique_ids, first
