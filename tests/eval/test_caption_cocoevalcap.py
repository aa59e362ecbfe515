"""BLEU-4 / CIDEr equal pycocoevalcap's standard pipeline (COCOEvalCap.evaluate(): PTBTokenizer, then the
scorers) on a small set with several references per image; the fallback tokenizer is labelled."""
from __future__ import annotations

import logging

import pytest

import internvl_train.eval.captioning as captioning
from internvl_train.eval.captioning import caption_metrics

needs_java = pytest.mark.skipif(not captioning.java_available(), reason="the PTB tokenizer needs Java")

REFS = {
    "img1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave (in the ocean).",
             "Man on a surf-board, riding the waves!"],
    "img2": ["Two dogs play with a frisbee in the park.", "It's a pair of dogs playing in the grass.",
             "Dogs running on a green field; one has a red frisbee."],
    "img3": ["A plate of food with broccoli and rice.", "A white plate topped with rice, meat and broccoli.",
             "Broccoli, rice & chicken on a plate"],
    "img4": ["A red double-decker bus on a city street.", "The bus is driving down the road.",
             "A large red bus parked near a curb... in London"],
}
PREDS = {"img1": "A surfer riding a wave on a surfboard.", "img2": "Two dogs playing with a frisbee (red) in a field.",
         "img3": "A plate of rice and broccoli.", "img4": "It's a red bus driving down a street."}


def cocoevalcap_scores(preds: dict, refs: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """pycocoevalcap's COCOEvalCap.evaluate() on COCO-format objects; METEOR and SPICE stubbed out (SPICE
    downloads CoreNLP models; neither is one of our metrics), everything else the library's own code."""
    from pycocoevalcap import eval as coco_eval
    from pycocotools.coco import COCO

    class Skip:
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "skipped"

    monkeypatch.setattr(coco_eval, "Meteor", Skip)
    monkeypatch.setattr(coco_eval, "Spice", Skip)
    ids = {k: i for i, k in enumerate(sorted(refs))}
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in ids.values()],
                    "annotations": [{"image_id": ids[k], "id": 100 * ids[k] + j, "caption": c}
                                    for k, caps in refs.items() for j, c in enumerate(caps)]}
    coco.createIndex()
    result = coco.loadRes([{"image_id": ids[k], "caption": c} for k, c in preds.items()])
    evaluator = coco_eval.COCOEvalCap(coco, result)
    evaluator.evaluate()
    return evaluator.eval


@needs_java
def test_bleu4_and_cider_equal_cocoevalcap_with_ptb(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = caption_metrics(PREDS, REFS, tokenizer="ptb")
    ref = cocoevalcap_scores(PREDS, REFS, monkeypatch)
    assert ours["bleu4"] == ref["Bleu_4"] and ours["cider"] == ref["CIDEr"]
    assert ours["ptb_tokenizer"] == 1.0 and caption_metrics(PREDS, REFS)["ptb_tokenizer"] == 1.0  # auto -> PTB
    assert 0.05 < ours["bleu4"] < 1 and ours["cider"] > 0.1


@needs_java
def test_simple_fallback_is_labelled_and_not_the_standard_number() -> None:
    simple = caption_metrics(PREDS, REFS, tokenizer="simple")
    ptb = caption_metrics(PREDS, REFS, tokenizer="ptb")
    assert simple["ptb_tokenizer"] == 0.0 and (simple["bleu4"], simple["cider"]) != (ptb["bleu4"], ptb["cider"])


def test_missing_java_fails_clearly_or_falls_back_with_a_label(monkeypatch, caplog) -> None:
    monkeypatch.setattr(captioning, "java_available", lambda: False)
    with pytest.raises(RuntimeError, match="java.*tokenizer='simple'"):
        caption_metrics(PREDS, REFS, tokenizer="ptb")
    with caplog.at_level(logging.WARNING):
        m = caption_metrics(PREDS, REFS)
    assert m["ptb_tokenizer"] == 0.0 and "no `java` on PATH" in caplog.text
    with pytest.raises(ValueError, match="tokenizer"):
        caption_metrics(PREDS, REFS, tokenizer="spacy")
