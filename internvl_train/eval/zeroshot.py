"""Zero-shot classification: class-name x prompt-template classifier (open_clip's builder) and metrics.

Metrics follow LAION-AI/CLIP_benchmark clip_benchmark/metrics/zeroshot_classification.py (evaluate()):
- top-k: the label among `logits.topk(max k)` (its first k entries): ties at the boundary fall in torch's
  selection order, as there. top-k with fewer than k classes is undefined: NaN (clip_benchmark: acc5 = NaN
  below 5 classes), never 100;
- mean per-class recall (balanced accuracy, sklearn's `balanced_accuracy_score` of `logits.argmax`): the
  prediction is the FIRST class of maximal score; the mean runs over the classes that have images;
- duplicate class names stay separate classes (one column per class index, labels keep their meaning), as
  there; they get the same embedding (computed once here), so they tie exactly and argmax gives the first.
`ties="pessimistic"` counts every tie against the true class instead (a constant classifier is at chance).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from internvl_train.engine.collectives import all_reduce_sum

EncodeText = Callable[[list[str]], torch.Tensor]
__all__ = [
    "IMAGENET_CLASSNAMES", "OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES", "ZERO_SHOT_TIES",
    "zero_shot_accuracy", "zero_shot_classifier",
]
ZERO_SHOT_TIES = ("topk", "pessimistic")


class _Texts(list):
    """What open_clip's builder expects from a tokenizer: a batch with .to(device). Our encoder tokenizes."""

    def to(self, device: torch.device | str) -> "_Texts":
        return self


class _TextEncoder:
    """Adapts `encode_text(list[str])` to the `model.encode_text(tokens, normalize=True)` open_clip calls."""

    def __init__(self, encode_text: EncodeText) -> None:
        self.encode_text_fn = encode_text

    def encode_text(self, texts: _Texts, normalize: bool = True) -> torch.Tensor:
        emb = self.encode_text_fn(list(texts)).float()
        return F.normalize(emb, dim=-1) if normalize else emb


@torch.no_grad()
def zero_shot_classifier(
    encode_text: EncodeText,
    classnames: Sequence[str],
    templates: Sequence[str | Callable[[str], str]] = SIMPLE_IMAGENET_TEMPLATES,
    classes_per_batch: int = 10,
) -> torch.Tensor:
    """[D, C] weights: per class the mean of its normalised prompt embeddings, normalised again.

    templates: format strings ("a photo of a {}.") or callables, e.g. open_clip's OPENAI_IMAGENET_TEMPLATES.
    encode_text(list[str]) -> [n, D] embeddings (the stage adds its own prefix and tokenizes).
    A name listed twice keeps both columns (C = len(classnames)), with one shared embedding."""
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier: classnames and templates must both be non-empty.")
    unique = list(dict.fromkeys(classnames))
    weights = build_zero_shot_classifier(
        _TextEncoder(encode_text), _Texts, unique, list(templates), num_classes_per_batch=classes_per_batch
    )
    column = {name: i for i, name in enumerate(unique)}
    return weights[:, [column[name] for name in classnames]]


def _topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
    """clip_benchmark's accuracy(): one topk(max k, sorted) and its first k columns, per k <= C."""
    top = logits.topk(max(ks), dim=1).indices
    return [(top[:, :k] == labels[:, None]).any(dim=1) for k in ks]


def _pessimistic_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true_score = logits.gather(1, labels[:, None])
    return (logits > true_score).sum(dim=1) + ((logits == true_score).sum(dim=1) - 1)


@torch.no_grad()
def zero_shot_accuracy(
    image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, ks: Sequence[int] = (1, 5),
    ties: str = "topk",
) -> dict[str, float]:
    """{'top{k}', 'top{k}_chance', 'mean_per_class_recall' (percent), 'n_images'} over this rank's images,
    counts summed over ranks when distributed. top-k and its chance level are NaN when k > C.
    image_emb [N, D] normalised, labels [N], classifier [D, C]; ties: "topk" or "pessimistic" (module doc)."""
    if ties not in ZERO_SHOT_TIES:
        raise ValueError(f"zero_shot_accuracy: ties must be one of {ZERO_SHOT_TIES}, got {ties!r}.")
    n_classes = classifier.shape[1]
    labels = labels.long().to(image_emb.device)
    logits = image_emb.float() @ classifier.float().to(image_emb.device)
    defined = [k for k in ks if k <= n_classes]
    if ties == "topk":
        hits = _topk_hits(logits, labels, defined) if defined else []
        correct = logits.argmax(dim=1) == labels  # first maximal class (torch.argmax, like numpy's)
    else:
        rank = _pessimistic_rank(logits, labels)
        hits, correct = [rank < k for k in defined], rank == 0
    per_class = torch.stack([torch.bincount(labels, weights=correct.double(), minlength=n_classes),
                             torch.bincount(labels, minlength=n_classes).double()])
    counts = torch.tensor([float(labels.numel())] + [float(h.sum()) for h in hits], dtype=torch.float64)
    counts = all_reduce_sum(torch.cat([counts.to(image_emb.device), per_class.flatten()])).cpu()
    if counts[0] == 0:
        raise ValueError("zero_shot_accuracy: no images to evaluate.")
    return _accuracy_dict(counts, ks, defined, n_classes)


def _accuracy_dict(counts: torch.Tensor, ks: Sequence[int], defined: Sequence[int], n_classes: int) -> dict[str, float]:
    n, topk, per_class = counts[0], counts[1:1 + len(defined)], counts[1 + len(defined):].view(2, n_classes)
    out = {"n_images": float(n)}
    for k in ks:
        i = list(defined).index(k) if k in defined else None
        out[f"top{k}"] = 100.0 * float(topk[i] / n) if i is not None else float("nan")
        out[f"top{k}_chance"] = 100.0 * k / n_classes if i is not None else float("nan")
    present = per_class[1] > 0  # sklearn's balanced accuracy: classes without images are left out
    out["mean_per_class_recall"] = 100.0 * float((per_class[0][present] / per_class[1][present]).mean())
    return out
