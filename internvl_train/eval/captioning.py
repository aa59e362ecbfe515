"""Captioning metrics through pycocoevalcap's standard pipeline: PTBTokenizer (Stanford CoreNLP, Java), then
Bleu(4) and Cider, as pycocoevalcap/eval.py COCOEvalCap.evaluate() does; plus a trivial baseline.

`tokenizer` (CAPTION_TOKENIZERS):
- "ptb": the PTB tokenizer; raises a clear error when Java is missing;
- "simple": our fallback (lowercase, punctuation -> space, whitespace split): close to, not equal to, PTB;
- "auto" (default): "ptb" when `java` is on PATH, else "simple" with a warning.
Results say which was used: `ptb_tokenizer` is 1.0 (PTB) or 0.0 (fallback). METEOR and SPICE are not
computed (SPICE needs CoreNLP models downloaded at run time). CIDEr is CIDEr-D with its idf from the evaluated
references: it needs several images (a single image scores 0).
"""
from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from typing import Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

log = logging.getLogger(__name__)
CAPTION_TOKENIZERS = ("auto", "ptb", "simple")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_caption(text: str) -> str:
    """The fallback tokenizer: 'A dog, running!' -> 'a dog running'."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def java_available() -> bool:
    return shutil.which("java") is not None


def resolve_tokenizer(tokenizer: str) -> str:
    """'ptb' or 'simple' for `tokenizer` (module docstring); clear error or warning without Java."""
    if tokenizer not in CAPTION_TOKENIZERS:
        raise ValueError(f"caption tokenizer must be one of {CAPTION_TOKENIZERS}, got {tokenizer!r}.")
    if tokenizer == "simple":
        return "simple"
    if java_available():
        return "ptb"
    message = ("caption metrics: no `java` on PATH, so pycocoevalcap's PTB tokenizer (Stanford CoreNLP) cannot "
               "run; install a Java runtime (Debian: apt-get install default-jre-headless)")
    if tokenizer == "ptb":
        raise RuntimeError(message + ", or pass tokenizer='simple' for our approximate fallback.")
    log.warning("%s. Falling back to the simple tokenizer: scores differ slightly from the COCO tools and are "
                "marked ptb_tokenizer=0.", message)
    return "simple"


def ptb_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """pycocoevalcap's PTBTokenizer on {key: [captions]} in one Java call (lowercased, punctuation dropped)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})


def _tokenized(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], keys: list[str],
               tokenizer: str) -> tuple[dict, dict]:
    if tokenizer == "simple":
        return ({k: [normalize_caption(r) for r in references[k]] for k in keys},
                {k: [normalize_caption(predictions[k])] for k in keys})
    both = ptb_tokenize({**{("gt", k): list(references[k]) for k in keys},
                         **{("res", k): [predictions[k]] for k in keys}})
    return {k: both[("gt", k)] for k in keys}, {k: both[("res", k)] for k in keys}


def _check(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    missing = sorted(set(references) - set(predictions))[:5]
    extra = sorted(set(predictions) - set(references))[:5]
    if missing or extra:
        raise ValueError(f"caption_metrics: ids differ between predictions and references (missing {missing}, "
                         f"extra {extra}).")
    if not references:
        raise ValueError("caption_metrics: nothing to score.")
    if any(len(refs) == 0 for refs in references.values()):
        raise ValueError("caption_metrics: every image needs at least one reference caption.")


def caption_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    tokenizer: str = "auto") -> dict[str, float]:
    """{'bleu4', 'cider', 'ptb_tokenizer'} on pycocoevalcap's scale (BLEU in [0, 1]; CIDEr-D as returned, e.g.
    1.2 where papers print 120: multiply both by 100 for a paper table).

    predictions: {image_id: caption}; references: {image_id: [captions]} for the same ids."""
    _check(predictions, references)
    used = resolve_tokenizer(tokenizer)
    keys = sorted(references)
    gts, res = _tokenized(predictions, references, keys, used)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "ptb_tokenizer": float(used == "ptb")}


def most_frequent_caption(captions: Sequence[str]) -> str:
    """The most frequent normalised caption (ties: alphabetical), e.g. from the training captions."""
    counts = Counter(normalize_caption(c) for c in captions)
    if not counts:
        raise ValueError("most_frequent_caption: no captions given.")
    return min(counts, key=lambda c: (-counts[c], c))


def constant_caption_baseline(
    references: Mapping[str, Sequence[str]], train_captions: Sequence[str] | None = None, tokenizer: str = "auto"
) -> dict[str, float]:
    """Scores of predicting one caption for every image: the most frequent training caption (or, without
    training captions, the most frequent reference: an optimistic baseline). A model must beat this."""
    pool = train_captions if train_captions is not None else [c for refs in references.values() for c in refs]
    caption = most_frequent_caption(pool)
    return caption_metrics({k: caption for k in references}, references, tokenizer)
