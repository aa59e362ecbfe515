"""VQA accuracy: the official VQAv2 metric (answer processing and consensus scoring of the VQA evaluation
script), plain exact match, a majority-answer baseline, and a JSONL results writer.

Rules from GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py at master a013f00 ("Fixed
processing answers bug", 2021), re-implemented:
- prediction and human answers: newlines/tabs -> space, strip;
- only when the human answers are not all identical: both sides get `process_punctuation` then
  `process_digit_article` (lowercase, number words -> digits, articles dropped, contractions restored by the
  official table). When all annotators agree nothing else is done, on purpose (the maintainers: OCR-style
  answers must stay verbatim), so 'Yes' scores 0 against ten 'yes';
- score: for each of the n human answers, min(1, #matches among the other n - 1 / 3), averaged (for n = 10,
  the average over the 10 subsets of 9: 3 matches give 0.9, 4 or more 1).
Two metrics (VQA_METRICS), because a list of answers means two things:
- `vqav2`: the answers are independent human annotations; the official score above. With a single answer the
  official leave-one-out always scores 0; we score exact match instead (our one departure, documented).
- `exact_match`: the answers are accepted alternatives ("gray", "grey"): 1 when the processed prediction equals
  any processed answer (both sides always fully processed). Not a standard metric; named apart on purpose.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from data_pipelines.sft.config import VQA_METRICS

# vqaEval.py: self.punct (note: no apostrophe, period, colon, '%', '*', '#', '&', '$' ...)
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")  # vqaEval.commaStrip
# vqaEval.periodStrip is "(?!<=\d)(\.)(?!\d)": its "(?!<=\d)" is a look-AHEAD that always holds before a
# '.', so the rule is "a period not followed by a digit"; the official sub() passes re.UNICODE (32) as count.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = 32
_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
# vqaEval.contractions verbatim (its capitalised keys never match: words are lowercased before the lookup)
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: each mark is deleted when it touches a space anywhere in the answer, or when
    the answer holds a digit-comma-digit ('1,000' -> '1000'); otherwise it becomes a space ('t-shirt' ->
    't shirt'). Then periods not followed by a digit go ('2.' -> '2', '1.5' kept)."""
    glue = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in _PUNCT:  # the tests look at the original text, the replacements accumulate
        delete = glue or (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if delete else " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, number words -> digits, drop articles, restore contractions."""
    words = [_MANUAL_MAP.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(answer: str) -> str:
    """The official full processing of an answer: 'Two dogs.' -> '2 dogs'; 'The Cat' -> 'cat';
    '1,000' -> '1000'; 'dont' -> "don't"; '50%' and "it's" unchanged."""
    return process_digit_article(process_punctuation(_clean(answer)))


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQAv2 accuracy in [0, 1] of one prediction against n >= 2 human answers (module docstring)."""
    pred, gts = _clean(prediction), [_clean(a) for a in answers]
    if len(set(gts)) > 1:  # vqaEval: processing only when the annotators disagree
        pred, gts = normalize_answer(pred), [normalize_answer(g) for g in gts]
    matches = [g == pred for g in gts]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gts)


def exact_match_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the processed prediction equals any processed answer (answers = accepted alternatives)."""
    return float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})


def vqa_accuracy(prediction: str, references: Sequence[str], metric: str = "vqav2") -> float:
    """Accuracy in [0, 1] of one prediction against its reference answers under `metric` (module docstring)."""
    if not references:
        raise ValueError("vqa_accuracy: a question needs at least one reference answer.")
    if metric not in VQA_METRICS:
        raise ValueError(f"vqa_accuracy: unknown metric {metric!r}; expected one of {VQA_METRICS}.")
    if metric == "exact_match" or len(references) == 1:
        return exact_match_accuracy(prediction, references)
    return vqav2_accuracy(prediction, references)


def vqa_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                metric: str = "vqav2") -> dict[str, float]:
    """{'vqa_accuracy', '<metric>_accuracy' (the same number, named by its metric; percent), 'n_questions'}
    over the questions in `references` (all must be answered)."""
    missing = sorted(set(references) - set(predictions))[:5]
    if missing or not references:
        raise ValueError(f"vqa_metrics: no prediction for questions {missing}" if missing
                         else "vqa_metrics: no questions.")
    scores = [vqa_accuracy(predictions[q], refs, metric) for q, refs in references.items()]
    accuracy = 100.0 * sum(scores) / len(scores)
    return {"vqa_accuracy": accuracy, f"{metric}_accuracy": accuracy, "n_questions": float(len(scores))}


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
                raise ValueError("write_vqa_results: each record needs 'question_id' and 'answer', got "
                                 f"{sorted(record)}.")
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
