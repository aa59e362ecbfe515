"""Evaluation of image-text embeddings (stages 1 and 2): zero-shot classification and retrieval on every
eval set of the data config, each computed over all ranks."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from internvl_train.eval.tables import render_table, rows_by_encoder
from internvl_train.eval.retrieval import gather_retrieval_inputs, retrieval_metrics
from internvl_train.eval.zeroshot import zero_shot_accuracy, zero_shot_classifier
from internvl_train.stages.common import stable_ids

log = logging.getLogger(__name__)
EncodeImages = Callable[[torch.Tensor], torch.Tensor]  # pixel_values -> [B, D]
EncodeTexts = Callable[[list[str]], torch.Tensor]  # captions -> [B, D]


def first_rows(keys: list[str], seen: set) -> list[int]:
    """Rows of the batch holding an image not met before on this rank (adds them to `seen`): the eval sets
    give one row per (image, caption) with the image's key, so only these rows need an image encoding."""
    rows = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            rows.append(i)
    return rows


@torch.no_grad()
def embed_eval_set(eval_set: Any, image_encoders: Mapping[str, EncodeImages], encode_texts: EncodeTexts,
                   prepare: Callable[[dict], dict]) -> dict[str, Any]:
    """Normalised embeddings of this rank's share of the set: one image matrix per encoder with its labels and
    stable image ids (each image encoded once, from its first row), the captions and their image ids."""
    images: dict[str, list[torch.Tensor]] = {name: [] for name in image_encoders}
    texts, labels, image_ids, text_ids, seen = [], [], [], [], set()
    for batch in eval_set:
        batch = prepare(batch)
        rows = first_rows(batch["keys"], seen)
        # the whole batch when every row is a new image: the single-caption path stays as it was
        pixels = batch["pixel_values"] if len(rows) == len(batch["keys"]) else batch["pixel_values"][rows]
        if rows:
            for name, encode in image_encoders.items():
                images[name].append(F.normalize(encode(pixels).float(), dim=-1))
        texts.append(F.normalize(encode_texts(batch["captions"]).float(), dim=-1))
        text_ids.append(stable_ids(batch["keys"], texts[-1].device))
        labels.append(batch["labels"][rows])
        image_ids.append(text_ids[-1][rows])
    if not texts:
        raise ValueError(f"eval set {eval_set.name!r} yielded no samples on this rank: check its shards")
    return {"images": {k: torch.cat(v) for k, v in images.items()}, "texts": torch.cat(texts),
            "labels": torch.cat(labels).to(texts[0].device), "ids": torch.cat(image_ids),
            "text_ids": torch.cat(text_ids)}


def image_text_metrics(eval_set: Any, image_encoders: Mapping[str, EncodeImages], encode_texts: EncodeTexts,
                       prepare: Callable[[dict], dict]) -> dict[str, float]:
    """{'<set>/<encoder>/zeroshot_top1', ..., '<set>/<encoder>/i2t_R@1', ...} for one eval set."""
    emb = embed_eval_set(eval_set, image_encoders, encode_texts, prepare)
    out: dict[str, float] = {}
    classifier = None
    if eval_set.classnames and bool((emb["labels"] >= 0).all()):
        templates = eval_set.templates or ["{}"]
        classifier = zero_shot_classifier(lambda t: F.normalize(encode_texts(t).float(), dim=-1),
                                          eval_set.classnames, templates)
    for name, images in emb["images"].items():
        prefix = f"{eval_set.name}/{name}"
        if classifier is not None:
            acc = zero_shot_accuracy(images, emb["labels"], classifier)
            out.update({f"{prefix}/zeroshot_{k}": v for k, v in acc.items() if k != "n_images"})
        img, txt, txt_to_img = gather_retrieval_inputs(images, emb["ids"], emb["texts"], emb["text_ids"])
        out.update({f"{prefix}/{k}": v for k, v in retrieval_metrics(img, txt, txt_to_img).items()})
    return out


TASKS = {"retrieval": ("i2t_", "t2i_", "mean_recall"), "zero-shot": ("zeroshot_",), "captioning": ("caption/",),
         "VQA": ("vqa_accuracy", "majority_baseline")}
_NOT_SHOWN = ("_chance", "/n_images", "/n_questions", "/ptb_tokenizer", "/itg_loss")  # bookkeeping, not columns


def results_tables(results: Mapping[str, float]) -> dict[str, str]:
    """{task: paper-style markdown table} of a stage's evaluation results, one per task present."""
    tables = {}
    for task, markers in TASKS.items():
        part = {k: v for k, v in results.items()
                if any(m in k for m in markers) and not any(n in k for n in _NOT_SHOWN)}
        if part:
            tables[task] = render_table(rows_by_encoder(part))
    return tables


def log_results_tables(results: Mapping[str, float], rank: int = 0) -> None:
    """Log the tables on rank 0 (call it at the end of a stage's evaluate)."""
    if rank == 0:
        for task, table in results_tables(results).items():
            log.info("%s results:\n%s", task, table)
