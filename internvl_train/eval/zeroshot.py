"""Zero-shot classification: class-name x prompt-template classifier (open_clip's builder) and accuracy."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from internvl_train.losses.collectives import all_reduce_sum

EncodeText = Callable[[list[str]], torch.Tensor]
__all__ = [
    "IMAGENET_CLASSNAMES", "OPENAI_IMAGENET_TEMPLATES", "SIMPLE_IMAGENET_TEMPLATES", "zero_shot_accuracy",
    "zero_shot_classifier",
]


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
    encode_text(list[str]) -> [n, D] embeddings (the stage adds its own prefix and tokenizes)."""
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier: classnames and templates must both be non-empty.")
    return build_zero_shot_classifier(
        _TextEncoder(encode_text), _Texts, list(classnames), list(templates), num_classes_per_batch=classes_per_batch
    )


@torch.no_grad()
def zero_shot_accuracy(
    image_emb: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy in percent over this rank's images, summed over ranks when distributed, plus the
    chance level k/C of each. image_emb [N, D] normalised, labels [N], classifier [D, C]."""
    n_classes = classifier.shape[1]
    logits = image_emb.float() @ classifier.float()
    # rank of the true class, ties counted against it (a constant classifier is at chance, not perfect)
    true_score = logits.gather(1, labels.long()[:, None])
    rank = (logits > true_score).sum(dim=1) + ((logits == true_score).sum(dim=1) - 1)
    counts = torch.tensor([float(labels.numel())] + [float((rank < k).sum()) for k in ks], dtype=torch.float64)
    counts = all_reduce_sum(counts.to(image_emb.device)).cpu()
    if counts[0] == 0:
        raise ValueError("zero_shot_accuracy: no images to evaluate.")
    out = {"n_images": float(counts[0])}
    for i, k in enumerate(ks, start=1):
        out[f"top{k}"] = 100.0 * float(counts[i] / counts[0])
        out[f"top{k}_chance"] = 100.0 * min(k, n_classes) / n_classes
    return out
