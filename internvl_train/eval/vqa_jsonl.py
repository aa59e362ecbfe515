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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no config.json; pass a stage-3 export directory")
    if not Path(args.questions).is_file():
        raise SystemExit(f"--questions {args.questions}: no such file")
    from data_pipelines.sft import read_vqa_jsonl

    try:
        items = read_vqa_jsonl(args.questions, args.image_root)
    except (ValueError, json.JSONDecodeError) as e:
        raise SystemExit(f"--questions {args.questions}: {e}") from None
    items = items[: args.limit] if args.limit else items
    missing = [it["image"] for it in items if not Path(it["image"]).is_file()][:3]
    if not items or missing:
        raise SystemExit(f"--questions {args.questions}: " + (f"images not found: {missing} (set --image-root)"
                                                              if missing else "no questions"))
    import torch

    from internvl_train.eval.vqa import write_vqa_results
    from internvl_train.eval.vqa_generate import answer_items, prediction_records, score_answers
    from internvl_train.models.chat_generate import load_chat_for_inference

    torch.set_grad_enabled(False)
    model, prompter = load_chat_for_inference(args.model)
    answers = answer_items(model, prompter, items, args.batch_size, args.max_new_tokens)
    out = Path(args.out or f"{args.questions}.predictions.jsonl")
    write_vqa_results(out, prediction_records(items, answers, args.metric))
    print(json.dumps(score_answers(items, answers, args.metric), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
