"""Stage-2 evaluation on one held-out set: retrieval with InternVL-C, InternVL-G and their official ensemble
side by side (optionally G re-ranked by the ITM head), greedy captions scored against a trivial baseline, and
the ITG loss of the reference captions with their own image and with another image (image grounding).

Every model call goes through the module (`model(..., task=...)`) so ZeRO-3 gathers the parameters.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from internvl_train.eval.captioning import caption_metrics, constant_caption_baseline
from internvl_train.eval.retrieval import first_occurrence
from internvl_train.engine.collectives import all_gather_cat_uneven, all_reduce_sum
from internvl_train.losses.itg import itg_labels, next_token_ce
from internvl_train.losses.labels import IGNORE_INDEX
from internvl_train.models.internvl_g.generation import greedy_captions
from internvl_train.models.internvl_c.text_tower import prepare_caption_inputs
from internvl_train.stages.common import prefix_token_ids, stable_ids
from internvl_train.stages.image_text_eval import first_rows, image_text_metrics

log = logging.getLogger(__name__)

Prepare = Callable[[dict], dict]


def text_encoder(model: nn.Module, tokenizer: Any, st: Any, device: Any) -> Callable[[list[str]], torch.Tensor]:
    def encode_texts(captions: list[str]) -> torch.Tensor:
        text = prepare_caption_inputs(tokenizer, captions, st.caption_prefix, st.max_text_len)
        return model(text["input_ids"].to(device), text["attention_mask"].to(device), task="encode_text")

    return encode_texts


def image_encoders(model: nn.Module) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """c, g and the official InternVL-G ensemble normalize(c) + normalize(g), one ViT pass each (callers normalise)."""
    last: dict[str, torch.Tensor] = {}

    def tokens(pixels: torch.Tensor) -> torch.Tensor:
        if last.get("pixels") is not pixels:
            last.update(pixels=pixels, tokens=model(pixels, task="vision_tokens"))
        return last["tokens"]

    def c(pixels: torch.Tensor) -> torch.Tensor:
        return model(tokens(pixels), task="encode_image_c")

    def g(pixels: torch.Tensor) -> torch.Tensor:
        return model(tokens(pixels), task="encode_image_g")

    def cg(pixels: torch.Tensor) -> torch.Tensor:
        return model(tokens(pixels), task="encode_image_cg")

    return {"c": c, "g": g, "cg": cg}


@torch.no_grad()
def retrieval_metrics_on(eval_set: Any, model: nn.Module, tokenizer: Any, st: Any,
                         prepare: Prepare) -> dict[str, float]:
    """'<set>/{c,g,cg}/{zeroshot_top1, i2t_R@1, ...}' and, with st.itm_rerank_k, '<set>/g_itm/...'."""
    device = next(model.parameters()).device
    encode_texts = text_encoder(model, tokenizer, st, device)
    out = image_text_metrics(eval_set, image_encoders(model), encode_texts, prepare)
    if st.itm_rerank_k:
        out.update({f"{eval_set.name}/g_itm/{k}": v
                    for k, v in itm_rerank_metrics(eval_set, model, tokenizer, st, prepare).items()})
    return out


# ---- ITM re-ranking ------------------------------------------------------------------------------
def _embed_for_rerank(eval_set: Any, model: nn.Module, tokenizer: Any, st: Any, prepare: Prepare) -> dict:
    """Every image and caption of the set on every rank: per image (encoded once, from its first row) the G
    embedding, ViT tokens and stable id; per caption its ids, mask, embedding and its image's stable id."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("image", "tokens", "image_id", "ids", "mask", "text",
                                                             "text_image_id")}
    seen: set = set()
    for batch in eval_set:
        batch = prepare(batch)
        rows = first_rows(batch["keys"], seen)
        text = prepare_caption_inputs(tokenizer, batch["captions"], st.caption_prefix, st.max_text_len,
                                      pad_to_max_length=True)
        device = batch["pixel_values"].device
        ids, mask = text["input_ids"].to(device), text["attention_mask"].to(device)
        parts["text"].append(F.normalize(model(ids, mask, task="encode_text").float(), dim=-1))
        parts["ids"].append(ids)
        parts["mask"].append(mask)
        parts["text_image_id"].append(stable_ids(batch["keys"], device))
        parts["image_id"].append(parts["text_image_id"][-1][rows])
        if rows:
            pixels = batch["pixel_values"] if len(rows) == len(batch["keys"]) else batch["pixel_values"][rows]
            tokens = model(pixels, task="vision_tokens")
            parts["image"].append(F.normalize(model(tokens, task="encode_image_g").float(), dim=-1))
            parts["tokens"].append(tokens)
    emb = {k: all_gather_cat_uneven(torch.cat(v)) for k, v in parts.items()}
    # an image whose rows are not consecutive can be met on two ranks: keep its first copy, in set order
    keep = first_occurrence(emb["image_id"])[1].sort().values
    emb.update({k: emb[k][keep] for k in ("image", "tokens", "image_id")})
    emb["text_to_image"] = _text_to_image(emb["image_id"], emb["text_image_id"])
    return emb


def _text_to_image(image_ids: torch.Tensor, text_image_ids: torch.Tensor) -> torch.Tensor:
    """Row of each caption's image among the (unique) image ids."""
    order = image_ids.argsort()
    position = torch.searchsorted(image_ids[order], text_image_ids).clamp(max=image_ids.numel() - 1)
    if not bool((image_ids[order][position] == text_image_ids).all()):
        raise ValueError("ITM re-ranking: captions refer to image ids never embedded")
    return order[position]


def _reranked_rank(scores: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor) -> int:
    """Position of the best-scoring positive among `candidates` ordered by ITM match score (k when no
    positive is a candidate). `positives`: the query's positive candidate indices (an image's captions)."""
    hits = torch.isin(candidates, positives).nonzero()
    if hits.numel() == 0:
        return candidates.numel()
    return int((scores > scores[hits[:, 0]].max()).sum())


def itm_rerank_metrics(eval_set: Any, model: nn.Module, tokenizer: Any, st: Any, prepare: Prepare) -> dict[str, float]:
    """Recall@k (k <= itm_rerank_k) after re-ranking G's top-k by the ITM head's match probability, as
    retrieval_metrics counts: an image query is a hit when one of its captions is in the re-ranked top k, a
    caption query when its image is. Queries are split over ranks."""
    emb = _embed_for_rerank(eval_set, model, tokenizer, st, prepare)
    text_to_image = emb["text_to_image"]
    k = min(st.itm_rerank_k, emb["image"].shape[0], emb["text"].shape[0])
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sims = {"i2t": emb["image"] @ emb["text"].T, "t2i": emb["text"] @ emb["image"].T}
    ks = [r for r in (1, 5, 10) if r <= k]
    hits = torch.zeros(2, len(ks), dtype=torch.float64)
    for d, (direction, sim) in enumerate(sims.items()):
        for query in range(rank, sim.shape[0], world):
            candidates = sim[query].topk(k).indices
            if direction == "i2t":
                images, texts = torch.full_like(candidates, query), candidates
                positives = (text_to_image == query).nonzero()[:, 0]
            else:
                images, texts = candidates, torch.full_like(candidates, query)
                positives = text_to_image[query:query + 1]
            width = int(emb["mask"][texts].sum(dim=1).max())
            logits = model(emb["tokens"][images], emb["ids"][texts][:, :width], emb["mask"][texts][:, :width],
                           task="itm_logits")
            position = _reranked_rank(logits.float().softmax(dim=-1)[:, 1], candidates, positives)
            hits[d] += torch.tensor([float(position < r) for r in ks], dtype=torch.float64)
    hits = all_reduce_sum(hits.to(emb["image"].device)).cpu() * 100.0
    counts = [sim.shape[0] for sim in sims.values()]
    return {f"{direction}_R@{r}": float(hits[d, j]) / counts[d] for d, direction in enumerate(sims)
            for j, r in enumerate(ks)}


# ---- captioning ----------------------------------------------------------------------------------
def _all_gather_dicts(local: dict) -> dict:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def _all_gather_lists(local: dict[str, list]) -> dict[str, list]:
    """{key: list} of every rank, the lists of one key joined (rank order)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return local
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[str, list] = {}
    for part in parts:
        for key, values in part.items():
            merged.setdefault(key, []).extend(values)
    return merged


def _itg_loss_sums(model: nn.Module, tokens: torch.Tensor, captions: list[str], tokenizer: Any, st: Any,
                   prefix_len: int, image_of: torch.Tensor | None = None) -> torch.Tensor:
    """[ITG loss summed over the caption tokens with each caption's own image, the same with the previous image
    of the batch (a derangement of the images), supervised token count] in float64; zeros for one image.
    `image_of`: the row of `tokens` of each caption (several captions per image); None: caption i, image i."""
    if tokens.shape[0] < 2:
        return torch.zeros(3, dtype=torch.float64)
    text = prepare_caption_inputs(tokenizer, captions, st.itg_prefix, st.max_text_len)
    ids, mask = text["input_ids"].to(tokens.device), text["attention_mask"].to(tokens.device)
    labels = itg_labels(ids, prefix_len, mask)
    pairs = (tokens, tokens.roll(1, dims=0)) if image_of is None else \
        (tokens[image_of], tokens[(image_of - 1) % tokens.shape[0]])
    sums = [next_token_ce(model(images, ids, mask, task="itg_logits"), labels, reduction="sum") for images in pairs]
    return torch.tensor([float(sums[0]), float(sums[1]), float((labels[:, 1:] != IGNORE_INDEX).sum())],
                        dtype=torch.float64)


def _captioned_rows(keys: list[str], seen: set, todo: int) -> tuple[list[int], list[int], list[int]]:
    """(first row of each of at most `todo` new images, the rows of the batch holding their captions, the
    index among the former of each such caption's image)."""
    images = first_rows(keys, seen)[:todo]
    where = {keys[row]: i for i, row in enumerate(images)}
    caption_rows = [row for row, key in enumerate(keys) if key in where]
    return images, caption_rows, [where[keys[row]] for row in caption_rows]


@torch.no_grad()
def caption_metrics_on(eval_set: Any, model: nn.Module, tokenizer: Any, st: Any, prepare: Prepare) -> dict[str, float]:
    """Greedy captions of the set's first ~st.caption_eval_images images (split over ranks, each image
    captioned once), BLEU-4 and CIDEr against ALL its captions (the set's rows sharing its key), and the same
    scores of a trivial baseline: one constant caption for every image, the most frequent caption of the set's
    other images (of the captioned ones when there are no others).
    `itg_loss` / `itg_loss_other_image`: mean ITG loss per caption token of those images' captions in their
    batch given their own image / another image of the batch; equal when the captioner ignores the image."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    share = math.ceil(st.caption_eval_images / world)
    predictions: dict[str, str] = {}
    captions_of: dict[str, list[str]] = {}  # every caption of every image of this rank
    seen: set = set()
    itg = lambda v, i, m: model(v, i, m, task="itg_logits")  # noqa: E731
    prefix_len = prefix_token_ids(tokenizer, st.itg_prefix).numel()
    loss_sums = torch.zeros(3, dtype=torch.float64)
    for batch in eval_set:
        for key, caption in zip(batch["keys"], batch["captions"]):
            captions_of.setdefault(key, []).append(caption)
        todo = share - len(predictions)
        if todo <= 0:
            continue
        images, caption_rows, image_of = _captioned_rows(batch["keys"], seen, todo)
        if not images:
            continue
        batch = prepare(batch)
        prefix = images == list(range(len(images)))  # one caption per image: the slice, as before
        pixels = batch["pixel_values"][:len(images)] if prefix else batch["pixel_values"][images]
        tokens = model(pixels, task="vision_tokens")
        captions = greedy_captions(itg, tokenizer, tokens, st.itg_prefix, st.caption_max_new_tokens)
        one_each = caption_rows == images and prefix
        loss_sums += _itg_loss_sums(model, tokens, [batch["captions"][r] for r in caption_rows], tokenizer, st,
                                    prefix_len, None if one_each else torch.tensor(image_of, device=tokens.device))
        predictions.update(zip((batch["keys"][r] for r in images), captions))
    predictions, captions_of = _all_gather_dicts(predictions), _all_gather_lists(captions_of)
    references = {key: captions_of[key] for key in predictions}
    others = [c for key, caps in captions_of.items() if key not in predictions for c in caps]
    for key in sorted(predictions)[:3]:
        log.info("caption %s: %r (reference %r)", key, predictions[key], references[key][0])
    ours = caption_metrics(predictions, references)
    baseline = constant_caption_baseline(references, others or None)
    prefix = f"{eval_set.name}/caption"
    out = {f"{prefix}/bleu4": ours["bleu4"], f"{prefix}/cider": ours["cider"],
           f"{prefix}/baseline_bleu4": baseline["bleu4"], f"{prefix}/baseline_cider": baseline["cider"],
           f"{prefix}/n_images": float(len(predictions)),
           f"{prefix}/ptb_tokenizer": ours["ptb_tokenizer"]}  # 1: pycocoevalcap's PTB (Java), 0: the fallback
    matched, other_image, n_tokens = all_reduce_sum(loss_sums.to(next(model.parameters()).device)).tolist()
    if n_tokens:
        out.update({f"{prefix}/itg_loss": matched / n_tokens, f"{prefix}/itg_loss_other_image": other_image / n_tokens})
    return out
