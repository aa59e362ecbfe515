"""Evaluation of image-text embeddings (stages 1 and 2): zero-shot classification and retrieval on every
eval set of the data config, each computed over all ranks."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from internvl_train.eval.retrieval import gather_retrieval_inputs, retrieval_metrics
from internvl_train.eval.zeroshot import zero_shot_accuracy, zero_shot_classifier
from internvl_train.stages.common import stable_ids

EncodeImages = Callable[[torch.Tensor], torch.Tensor]  # pixel_values -> [B, D]
EncodeTexts = Callable[[list[str]], torch.Tensor]  # captions -> [B, D]


@torch.no_grad()
def embed_eval_set(eval_set: Any, image_encoders: Mapping[str, EncodeImages], encode_texts: EncodeTexts,
                   prepare: Callable[[dict], dict]) -> dict[str, Any]:
    """Normalised embeddings of this rank's share of the set: one image matrix per encoder, the captions,
    labels and stable sample ids."""
    images: dict[str, list[torch.Tensor]] = {name: [] for name in image_encoders}
    texts, labels, ids = [], [], []
    for batch in eval_set:
        batch = prepare(batch)
        for name, encode in image_encoders.items():
            images[name].append(F.normalize(encode(batch["pixel_values"]).float(), dim=-1))
        texts.append(F.normalize(encode_texts(batch["captions"]).float(), dim=-1))
        labels.append(batch["labels"])
        ids.append(stable_ids(batch["keys"], texts[-1].device))
    if not texts:
        raise ValueError(f"eval set {eval_set.name!r} yielded no samples on this rank: check its shards")
    return {"images": {k: torch.cat(v) for k, v in images.items()}, "texts": torch.cat(texts),
            "labels": torch.cat(labels).to(texts[0].device), "ids": torch.cat(ids)}


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
        img, txt, txt_to_img = gather_retrieval_inputs(images, emb["ids"], emb["texts"], emb["ids"])
        out.update({f"{prefix}/{k}": v for k, v in retrieval_metrics(img, txt, txt_to_img).items()})
    return out
