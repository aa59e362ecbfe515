"""Evaluate an exported chat model on a JSONL VQA benchmark of your own.

    python -m internvl_train.eval.vqa_jsonl --model runs/sft/export --questions bench.jsonl \
        [--image-root DIR] [--metric exact_match|vqav2] [--out predictions.jsonl]

Each line: {"question": str, "image": path (relative to --image-root, default the file's folder),
"answers": [str, ...], optional "question_id" and "kind"}. The prompt, template and tiling are the model's
own (as in training and in `python -m internvl_train.chat`); answers are greedy. Prints the metrics as one
JSON object (vqa_accuracy, majority_baseline, n_questions, vqa_accuracy/<kind>) and writes one prediction per
question to --out. `--metric`: exact_match when `answers` lists accepted alternatives, vqav2 when it holds
independent human answers (internvl_train.eval.vqa).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from internvl_train.eval.vqa import VQA_METRICS


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m internvl_train.eval.vqa_jsonl",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="chat export directory (runs/sft/export or its official/)")
    parser.add_argument("--questions", required=True, help="JSONL of {question, image, answers}")
    parser.add_argument("--image-root", help="folder the image paths are relative to (default: the JSONL's)")
    parser.add_argument("--metric", choices=VQA_METRICS, default="exact_match")
    parser.add_argument("--out", help="predictions JSONL (default: <questions>.predictions.jsonl)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N questions (0 = all)")
    return parser.parse_args(argv)


def read_questions(questions: str, image_root: Optional[str], limit: int = 0) -> list[dict]:
    """The benchmark's items; SystemExit naming the file when it cannot be read or its images are missing."""
    if not Path(questions).is_file():
        raise SystemExit(f"--questions {questions}: no such file")
    from data_pipelines.sft import read_vqa_jsonl

    try:
        items = read_vqa_jsonl(questions, image_root)
    except (ValueError, json.JSONDecodeError) as e:
        raise SystemExit(f"--questions {questions}: {e}") from None
    items = items[:limit] if limit else items
    missing = [it["image"] for it in items if not Path(it["image"]).is_file()][:3]
    if not items or missing:
        raise SystemExit(f"--questions {questions}: " + (f"images not found: {missing} (set --image-root)"
                                                         if missing else "no questions"))
    return items


def evaluate_chat_export(model_dir: str, items: Sequence[dict], metric: str, batch_size: int = 16,
                         max_new_tokens: int = 16) -> tuple[dict[str, float], list[dict]]:
    """Greedy answers of a stage-3 export to `items`, with the model's own prompt, template and tiling:
    (scores, one prediction record per question)."""
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--model {model_dir}: no config.json; pass a stage-3 export directory")
    import torch

    from internvl_train.eval.vqa_generate import answer_items, prediction_records, score_answers
    from internvl_train.inference.prompt import load_chat_for_inference

    with torch.no_grad():
        model, prompter = load_chat_for_inference(model_dir)
        answers = answer_items(model, prompter, items, batch_size, max_new_tokens)
    return score_answers(items, answers, metric), prediction_records(items, answers, metric)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    items = read_questions(args.questions, args.image_root, args.limit)
    scores, records = evaluate_chat_export(args.model, items, args.metric, args.batch_size, args.max_new_tokens)
    from internvl_train.eval.vqa import write_vqa_results

    write_vqa_results(Path(args.out or f"{args.questions}.predictions.jsonl"), records)
    print(json.dumps(scores, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
