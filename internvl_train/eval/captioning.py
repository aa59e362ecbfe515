"""Captioning metrics: BLEU-4 and CIDEr(-D) from pycocoevalcap, plus a trivial baseline to compare with.

Tokenisation is ours, not the PTB tokenizer (that one starts a Java process): lowercase, punctuation
replaced by spaces, whitespace split. Scores are therefore close to, not identical with, the COCO server's.
CIDEr's idf comes from the references of the evaluated set: it needs a few images to be meaningful (with a
single image every n-gram has idf 0 and CIDEr is 0).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_caption(text: str) -> str:
    """'A dog, running!' -> 'a dog running'."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def caption_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """{'bleu4', 'cider'} (COCO scale: BLEU in [0, 1], CIDEr-D x10 as reported, e.g. 1.2 = 120).

    predictions: {image_id: caption}; references: {image_id: [captions]} for the same ids."""
    missing = sorted(set(references) - set(predictions))[:5]
    extra = sorted(set(predictions) - set(references))[:5]
    if missing or extra:
        raise ValueError(f"caption_metrics: ids differ between predictions and references (missing {missing}, extra {extra}).")
    if not references:
        raise ValueError("caption_metrics: nothing to score.")
    if any(len(refs) == 0 for refs in references.values()):
        raise ValueError("caption_metrics: every image needs at least one reference caption.")
    keys = sorted(references)
    gts = {k: [normalize_caption(r) for r in references[k]] for k in keys}
    res = {k: [normalize_caption(predictions[k])] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider)}


def most_frequent_caption(captions: Sequence[str]) -> str:
    """The most frequent normalised caption (ties: alphabetical), e.g. from the training captions."""
    counts = Counter(normalize_caption(c) for c in captions)
    if not counts:
        raise ValueError("most_frequent_caption: no captions given.")
    return min(counts, key=lambda c: (-counts[c], c))


def constant_caption_baseline(
    references: Mapping[str, Sequence[str]], train_captions: Sequence[str] | None = None
) -> dict[str, float]:
    """Scores of predicting one caption for every image: the most frequent training caption (or, without
    training captions, the most frequent reference: an optimistic baseline). A model must beat this."""
    pool = train_captions if train_captions is not None else [c for refs in references.values() for c in refs]
    caption = most_frequent_caption(pool)
    return caption_metrics({k: caption for k in references}, references)
