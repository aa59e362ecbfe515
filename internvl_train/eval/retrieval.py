"""Image <-> text retrieval recall (R@1/5/10 and their mean), computed in chunks.

Only a [chunk, N] block of similarities exists at a time. Several captions per image are supported through
`text_to_image` (row of each caption's image): images are keyed by image, not by caption row
(`gather_retrieval_inputs` keeps one row per image id). A query is a hit at k when one of its positives is
among the k retrieved candidates (the CLIP-paper recall; clip_benchmark's `recall_at_k(...) > 0`).

Ties (`ties`, RETRIEVAL_TIES):
- "topk" (default, = LAION-AI/CLIP_benchmark clip_benchmark/metrics/zeroshot_retrieval.py): the k
  candidates are `torch.topk(scores, k)` of the query's row. Candidates tied at the k-th score are then
  picked by torch's selection order, which is unspecified (it differs between CPU and CUDA and between
  torch builds, and is not "lower index first"): exactly what clip_benchmark reports on the same device.
- "pessimistic": every tie counts against the query (rank = number of negatives scoring >= its best
  positive): a lower bound; a collapsed model whose embeddings are all equal scores 0, not anything up to 100.
"""
from __future__ import annotations

from typing import Sequence

import torch

from internvl_train.engine.collectives import all_gather_cat_uneven

RETRIEVAL_TIES = ("topk", "pessimistic")


def topk_hits(scores: torch.Tensor, positive: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """[len(ks), Q] bool: a positive among torch.topk(scores, k) of each query row (clip_benchmark's rule;
    k is capped at the number of candidates)."""
    hits = []
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        hits.append(positive.gather(1, top).any(dim=1))
    return torch.stack(hits)


def pessimistic_hits(scores: torch.Tensor, positive: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """[len(ks), Q] bool: fewer than k negatives score >= the query's best positive (ties count against)."""
    best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    rank = ((scores >= best) & ~positive).sum(dim=1)
    return torch.stack([rank < k for k in ks])


def _hits(image: torch.Tensor, text: torch.Tensor, text_to_image: torch.Tensor, direction: str,
          ks: Sequence[int], ties: str, chunk: int) -> torch.Tensor:
    """[len(ks), n_queries] hits, queries = images ('i2t') or captions ('t2i'), chunk rows at a time."""
    queries, candidates = (image, text) if direction == "i2t" else (text, image)
    rule = topk_hits if ties == "topk" else pessimistic_hits
    out = []
    for start in range(0, queries.shape[0], chunk):
        rows = torch.arange(start, min(start + chunk, queries.shape[0]), device=queries.device)
        scores = queries[rows].float() @ candidates.float().T
        if direction == "i2t":  # positives of image r: its captions
            positive = text_to_image[None, :] == rows[:, None]
        else:  # positive of caption r: its image
            positive = torch.arange(image.shape[0], device=image.device)[None, :] == text_to_image[rows][:, None]
        out.append(rule(scores, positive, ks))
    return torch.cat(out, dim=1)


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    ties: str = "topk",
) -> dict[str, float]:
    """Recall@k in percent: {'i2t_R@1', ..., 't2i_R@10', 'i2t_mean', 't2i_mean', 'mean_recall'}.

    image_emb [N_img, D] (one row per image), text_emb [N_txt, D] (normalised, so dot = cosine);
    text_to_image [N_txt] row of each caption's image. Every image needs at least one caption.
    ties: "topk" (clip_benchmark) or "pessimistic" (module docstring)."""
    if ties not in RETRIEVAL_TIES:
        raise ValueError(f"retrieval_metrics: ties must be one of {RETRIEVAL_TIES}, got {ties!r}.")
    text_to_image = text_to_image.to(image_emb.device).long()
    out_of_range = text_to_image.min() < 0 or text_to_image.max() >= image_emb.shape[0]
    if text_to_image.shape != (text_emb.shape[0],) or out_of_range:
        raise ValueError(
            f"retrieval_metrics: text_to_image must be [N_txt={text_emb.shape[0]}] row indices into image_emb "
            f"(0..{image_emb.shape[0] - 1}), got shape {tuple(text_to_image.shape)}."
        )
    if torch.bincount(text_to_image, minlength=image_emb.shape[0]).min() == 0:
        raise ValueError("retrieval_metrics: some images have no caption; drop them or add their captions.")
    out: dict[str, float] = {}
    for name in ("i2t", "t2i"):
        hits = _hits(image_emb, text_emb, text_to_image, name, ks, ties, chunk_size)
        for k, hit in zip(ks, hits):
            out[f"{name}_R@{k}"] = 100.0 * hit.float().mean().item()
        out[f"{name}_mean"] = sum(out[f"{name}_R@{k}"] for k in ks) / len(ks)
    out["mean_recall"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    return out


def gather_retrieval_inputs(
    image_emb: torch.Tensor, image_ids: torch.Tensor, text_emb: torch.Tensor, text_image_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each rank's shard (sizes may differ) and map caption image ids to image rows.

    Images are keyed by `image_ids`: pass the id of the IMAGE of each row (not of the caption or sample), so
    that an eval set with one row per (image, caption) pair gives one image with several captions. Rows
    holding an image already seen (several captions, or a sampler padding the last shard) are kept once
    (the first); returns
    (image_emb, text_emb, text_to_image) ready for retrieval_metrics, identical on every rank."""
    images = all_gather_cat_uneven(image_emb)
    ids = all_gather_cat_uneven(image_ids.long())
    texts = all_gather_cat_uneven(text_emb)
    text_ids = all_gather_cat_uneven(text_image_ids.long())
    unique_ids, first = first_occurrence(ids)
    missing = ~torch.isin(text_ids, unique_ids)
    if missing.any():
        raise ValueError("gather_retrieval_inputs: captions refer to image ids never embedded: "
                         f"{text_ids[missing][:5].tolist()}")
    return images[first], texts, torch.searchsorted(unique_ids, text_ids)


def first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique ids, index of the first row holding each)."""
    unique_ids, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique_ids.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return unique_ids, first
