"""VQA accuracy with the VQAv2 answer normalisation, a majority-answer baseline, and a JSONL results writer.

Normalisation (after the official VQA evaluation script, simplified): lowercase, thousands commas and
periods not between digits removed ("1.5" kept), other punctuation -> space, apostrophes dropped then common
contractions restored ("dont" / "don't" -> "don't"), number words -> digits, articles (a, an, the) dropped.
Two ways to score a prediction against its list of answers (VQA_METRICS), because lists mean two things:
- `exact_match`: the answers are alternatives ("gray", "grey"): right when the prediction equals any of them.
- `vqav2`: the answers are independent human annotations (VQAv2 has 10): the official consensus accuracy, for
  each reference min(#other references equal to the prediction / 3, 1), averaged over the references (3
  matches of 10 give 0.9, 4 or more give 1). Scoring a list of alternatives this way is wrong: a prediction
  matching one of two synonyms would get 1/6.
With one reference both are exact match.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from data_pipelines.sft.config import VQA_METRICS

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "im": "i'm",
                 "ive": "i've", "youre": "you're", "thats": "that's", "whats": "what's", "hes": "he's",
                 "shes": "she's", "its": "it's", "theyre": "they're", "couldnt": "couldn't", "shouldnt": "shouldn't"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_COMMA_NUMBER = re.compile(r"(\d),(\d)")


def normalize_answer(answer: str) -> str:
    """'Two dogs.' -> '2 dogs'; 'The Cat' -> 'cat'; '1,000' -> '1000'; "Don't" / 'dont' -> "don't"."""
    text = _COMMA_NUMBER.sub(r"\1\2", answer.lower().strip())
    text = _PUNCT.sub(" ", _PERIOD.sub("", text)).replace("'", "")
    words = (_NUMBERS.get(w, _CONTRACTIONS.get(w, w)) for w in text.split())
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, references: Sequence[str], metric: str = "vqav2") -> float:
    """Accuracy in [0, 1] of one prediction against its reference answers under `metric` (module docstring)."""
    if not references:
        raise ValueError("vqa_accuracy: a question needs at least one reference answer.")
    if metric not in VQA_METRICS:
        raise ValueError(f"vqa_accuracy: unknown metric {metric!r}; expected one of {VQA_METRICS}.")
    pred = normalize_answer(prediction)
    refs = [normalize_answer(r) for r in references]
    if len(refs) == 1 or metric == "exact_match":
        return float(pred in refs)
    matches = [r == pred for r in refs]
    total = sum(matches)
    return sum(min((total - m) / 3.0, 1.0) for m in matches) / len(refs)


def vqa_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                metric: str = "vqav2") -> dict[str, float]:
    """{'vqa_accuracy' (percent), 'n_questions'} over the questions in `references` (all must be answered)."""
    missing = sorted(set(references) - set(predictions))[:5]
    if missing or not references:
        raise ValueError(f"vqa_metrics: no prediction for questions {missing}" if missing else "vqa_metrics: no questions.")
    scores = [vqa_accuracy(predictions[q], refs, metric) for q, refs in references.items()]
    return {"vqa_accuracy": 100.0 * sum(scores) / len(scores), "n_questions": float(len(scores))}


def majority_answer_baseline(
    references: Mapping[str, Sequence[str]], train_answers: Sequence[str] | None = None, metric: str = "vqav2"
) -> dict[str, float]:
    """Accuracy of answering every question with the most common (normalised) answer: of the training
    answers when given, else of the evaluated references (optimistic)."""
    pool = train_answers if train_answers is not None else [a for refs in references.values() for a in refs]
    counts = Counter(normalize_answer(a) for a in pool)
    if not counts:
        raise ValueError("majority_answer_baseline: no answers given.")
    answer = min(counts, key=lambda a: (-counts[a], a))
    metrics = vqa_metrics({q: answer for q in references}, references, metric)
    return {**metrics, "majority_answer": answer}  # type: ignore[dict-item]


def write_vqa_results(path: str | Path, results: Iterable[Mapping[str, object]]) -> int:
    """Write one JSON object per line ({'question_id': ..., 'answer': ..., any extra fields}); returns the
    count. Written to a temporary file then renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for record in results:
            if "question_id" not in record or "answer" not in record:
                raise ValueError(f"write_vqa_results: each record needs 'question_id' and 'answer', got {sorted(record)}.")
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
