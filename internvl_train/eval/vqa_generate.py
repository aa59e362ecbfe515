"""VQA evaluation by generation: answer {question, image, answers} items with a chat model, score them.

Used by the stage-3 evaluation (held-out demo questions or data.sft.heldout_vqa) and by the JSONL evaluator
CLI (internvl_train.eval.vqa_jsonl). Items are split over ranks; every rank runs the same number of
generate() calls (the last batch padded) so ZeRO-3's collective parameter gathers stay in step.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

from PIL import Image

from internvl_train.eval.vqa import majority_answer_baseline, vqa_accuracy, vqa_metrics
from internvl_train.inference.prompt import ChatPrompter, generate


def item_id(item: Mapping[str, Any], index: int) -> str:
    return str(item.get("question_id", index))


def answer_items(model: Any, prompter: ChatPrompter, items: Sequence[Mapping[str, Any]], batch_size: int,
                 max_new_tokens: int, rank: int = 0, world_size: int = 1, synced_gpus: bool = False
                 ) -> dict[int, str]:
    """{item index: answer} for this rank's share (items rank, rank + world_size, ...)."""
    mine = list(range(rank, len(items), world_size))
    n_batches = math.ceil(math.ceil(len(items) / world_size) / batch_size)
    answers: dict[int, str] = {}
    for b in range(n_batches):
        chunk = mine[b * batch_size:(b + 1) * batch_size]
        padded = chunk or mine[:1] or [0]  # a rank with nothing left still steps with the others
        requests = []
        for i in padded:
            with Image.open(items[i]["image"]) as im:
                requests.append((items[i]["question"], [im.convert("RGB")]))
        out = generate(model, prompter, requests, max_new_tokens, synced_gpus=synced_gpus)
        answers.update({i: a for i, a in zip(chunk, out)})
    return answers


def score_answers(items: Sequence[Mapping[str, Any]], answers: Mapping[int, str],
                  metric: str) -> dict[str, float]:
    """vqa_accuracy (percent), the majority-answer baseline, n_questions and accuracy per question `kind`,
    all under `metric` (eval.vqa.VQA_METRICS)."""
    refs = {item_id(it, i): list(it["answers"]) for i, it in enumerate(items)}
    preds = {item_id(it, i): answers[i] for i, it in enumerate(items)}
    out = vqa_metrics(preds, refs, metric)
    out["majority_baseline"] = majority_answer_baseline(refs, metric=metric)["vqa_accuracy"]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for i, it in enumerate(items):
        if "kind" in it:
            by_kind[str(it["kind"])].append(vqa_accuracy(answers[i], it["answers"], metric))
    out.update({f"vqa_accuracy/{k}": 100.0 * sum(v) / len(v) for k, v in sorted(by_kind.items())})
    return out


def prediction_records(items: Sequence[Mapping[str, Any]], answers: Mapping[int, str],
                       metric: str) -> list[dict[str, Any]]:
    return [{"question_id": item_id(it, i), "question": it["question"], "answer": answers[i],
             "references": list(it["answers"]), "accuracy": vqa_accuracy(answers[i], it["answers"], metric)}
            for i, it in enumerate(items)]
