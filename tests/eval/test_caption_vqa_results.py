"""BLEU-4 / CIDEr on known examples, VQA normalisation and accuracy, results and answers files."""
from __future__ import annotations

import json

import pytest

from internvl_train.eval.captioning import caption_metrics, constant_caption_baseline, normalize_caption
from internvl_train.eval.results import append_results, read_results
from internvl_train.eval.vqa import (
    majority_answer_baseline,
    normalize_answer,
    vqa_accuracy,
    vqa_metrics,
    write_vqa_results,
)

REFS = {"1": ["A cat sits on a mat."], "2": ["two dogs run across the green field"]}


def test_bleu4_hand_computed() -> None:
    m = caption_metrics({"1": "a cat sits on the mat", "2": "two dogs run across the green field"}, REFS)
    # image 1: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3; image 2 identical (7 tokens); corpus-level BLEU
    p = [(5 + 7) / (6 + 7), (3 + 6) / (5 + 6), (2 + 5) / (4 + 5), (1 + 4) / (3 + 4)]
    expected = (p[0] * p[1] * p[2] * p[3]) ** 0.25
    assert m["bleu4"] == pytest.approx(expected, abs=1e-6)


def test_cider_is_ten_for_exact_single_references_and_lower_otherwise() -> None:
    exact = caption_metrics({"1": "a cat sits on a mat", "2": "Two dogs run across the green field!"}, REFS)
    assert exact["cider"] == pytest.approx(10.0, abs=1e-6)  # cosine 1 at every n, no length penalty
    assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6)
    swapped = caption_metrics({"1": REFS["2"][0], "2": REFS["1"][0]}, REFS)
    assert swapped["cider"] == pytest.approx(0.0, abs=1e-9) and swapped["bleu4"] < 1e-3


def test_constant_caption_baseline_and_normalisation() -> None:
    refs = {"1": ["a dog", "A dog."], "2": ["a dog!", "a red car"], "3": ["a blue boat", "boat on water"]}
    baseline = constant_caption_baseline(refs)
    perfect = caption_metrics({"1": "a dog", "2": "a red car", "3": "a blue boat"}, refs)
    assert 0.0 < baseline["cider"] < perfect["cider"]
    assert normalize_caption("A dog, running!") == "a dog running"
    with pytest.raises(ValueError, match="ids differ"):
        caption_metrics({"1": "x"}, refs)


@pytest.mark.parametrize(
    "raw, norm",
    [("Two dogs.", "2 dogs"), ("The Cat", "cat"), ("1,000", "1000"), ("Don't", "don't"), ("dont", "don't"),
     ("black/white", "black white"), ("1.5", "1.5"), ("  Yes!  ", "yes"), ("an apple", "apple"), ("none", "0")],
)
def test_vqa_answer_normalisation(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_official_leave_one_out() -> None:
    ten = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("two", ten) == pytest.approx(0.9)  # 3 matches -> 0.9
    assert vqa_accuracy("3", ten) == pytest.approx(1.0)
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)  # one match -> 1/3 on 9 of 10 subsets
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("x", [])


def test_vqa_metrics_majority_baseline_and_writer(tmp_path) -> None:
    refs = {"q1": ["yes"] * 10, "q2": ["no"] * 10, "q3": ["yes"] * 4 + ["2"] * 6}
    assert vqa_metrics({"q1": "yes", "q2": "no", "q3": "two"}, refs)["vqa_accuracy"] == pytest.approx(100.0)
    base = majority_answer_baseline(refs)
    assert base["majority_answer"] == "yes" and base["vqa_accuracy"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="no prediction"):
        vqa_metrics({"q1": "yes"}, refs)
    out = tmp_path / "answers" / "vqa.jsonl"
    assert write_vqa_results(out, [{"question_id": "q1", "answer": "yes"}, {"question_id": 2, "answer": "no"}]) == 2
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == ["q1", 2]
    with pytest.raises(ValueError, match="question_id"):
        write_vqa_results(out, [{"answer": "x"}])


def test_results_jsonl_appends(tmp_path) -> None:
    append_results(tmp_path, "contrastive", 10, {"i2t_R@1": 12.5, "bad": float("nan")})
    append_results(tmp_path, "contrastive", 20, {"i2t_R@1": 25.0}, dataset="demo")
    records = read_results(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[0]["metrics"] == {"i2t_R@1": 12.5, "bad": None} and records[1]["dataset"] == "demo"


def test_exact_match_treats_answers_as_alternatives() -> None:
    # a list of synonyms is not a list of human votes: matching one of them is fully right
    assert vqa_accuracy("Grey", ["gray", "grey"], metric="exact_match") == 1.0
    assert vqa_accuracy("grey", ["gray", "grey"], metric="vqav2") == pytest.approx(1 / 6)
    assert vqa_accuracy("blue", ["gray", "grey"], metric="exact_match") == 0.0
    assert vqa_metrics({"q": "upper left"}, {"q": ["top left", "upper left"]},
                       metric="exact_match")["vqa_accuracy"] == 100.0
    with pytest.raises(ValueError, match="unknown metric"):
        vqa_accuracy("x", ["x"], metric="bleu")
