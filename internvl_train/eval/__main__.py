"""Standalone evaluation of a stage export, no training config needed: retrieval / zero-shot for a stage-1
or stage-2 export, VQA for a stage-3 (chat) export.

    python -m internvl_train.eval EXPORT_DIR SPEC [SPEC ...] [--out DIR] [--device cuda] [--dtype bfloat16]

EXPORT_DIR: what a stage exports (models.checkpoint.save_pretrained + the tokenizer next to it; stage 3: the
chat export, native or official layout).
SPEC (docs/evaluation.md, "Evaluating an export on local data"), short forms:
    karpathy:ANNOTATION:IMAGE_ROOT[:SPLIT]      dataset_flickr30k.json / dataset_coco.json (split: test)
    coco_captions:ANNOTATION:IMAGE_ROOT         captions_val2014.json
    imagenet:VAL_DIR                             val/<wnid>/*.JPEG (ImageNet class names, OpenAI prompts)
    csv:FILE   shards:PATTERN
    vqa:QUESTIONS_JSONL[:IMAGE_ROOT]            stage-3 exports: {question, image, answers} lines
or key=value pairs, comma-separated, any EvalSetConfig field:
    name=flickr30k_cn,format=karpathy,annotation=/d/cn.json,root=/d/images,split=test,batch_size=32
Prints one table per task (retrieval, zero-shot, VQA) and appends one record to DIR/results.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from types import SimpleNamespace
from typing import Any, Iterator, Optional, Sequence

import torch

from data_pipelines.config import EvalSetConfig, validate_eval_set
from data_pipelines.eval_formats import default_set_name
from data_pipelines.sft.config import VQA_METRICS
from internvl_train.errors import ConfigError, qualified

_SHORT = {"karpathy": ("karpathy", ["annotation", "root", "split"]),
          "coco_captions": ("coco_captions", ["annotation", "root"]),
          "imagenet": ("imagenet_folder", ["root"]), "imagenet_folder": ("imagenet_folder", ["root"]),
          "csv": ("csv", ["csv"]), "shards": ("shards", ["shards"])}
VQA_SPEC = "vqa:"
_INT_FIELDS = {f.name for f in dataclasses.fields(EvalSetConfig) if f.type in ("int", int)}


def parse_spec(spec: str) -> EvalSetConfig:
    """An eval-set spec (module docstring) as an EvalSetConfig, checked like a config's eval set."""
    if "=" in spec.split(",", 1)[0] and not spec.split(":", 1)[0] in _SHORT:
        fields = dict(part.split("=", 1) for part in spec.split(",") if part)
        known = {f.name for f in dataclasses.fields(EvalSetConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(spec, f"unknown field(s) {unknown}; fields: {sorted(known)}")
        values: dict[str, Any] = {k: int(v) if k in _INT_FIELDS else v for k, v in fields.items()}
    else:
        kind, _, rest = spec.partition(":")
        if kind not in _SHORT or not rest:
            raise ConfigError(spec, f"expected FORMAT:PATH... with FORMAT one of {sorted(_SHORT)}, or key=value pairs")
        fmt, names = _SHORT[kind]
        parts = [rest] if fmt == "shards" else rest.split(":")  # a shard pattern may hold '::'
        if len(parts) > len(names) or (fmt in ("karpathy", "coco_captions") and len(parts) < 2):
            raise ConfigError(spec, f"{kind} takes {':'.join(n.upper() for n in names)}")
        values = {"format": fmt, **dict(zip(names, parts))}
    values.setdefault("name", default_set_name(values.get("format") or "", values.get("annotation")))
    cfg = EvalSetConfig(**values)
    with qualified(f"eval set {spec!r}"):
        validate_eval_set(cfg)
    return cfg


class _Counted:
    """An eval set that counts the images (distinct keys) and captions (rows) it yields."""

    def __init__(self, eval_set: Any) -> None:
        self.inner, self.keys, self.rows = eval_set, set(), 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.inner:
            self.keys.update(batch["keys"])
            self.rows += len(batch["keys"])
            yield batch


def load_export(path: str, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from internvl_train.models.tokenizer import has_tokenizer, load_local_tokenizer
    from internvl_train.models.weights import from_pretrained

    model = from_pretrained(path).to(device=device, dtype=dtype).eval()
    if not has_tokenizer(path):
        raise FileNotFoundError(f"{path}: no tokenizer next to the weights (a stage export saves it there)")
    return model, load_local_tokenizer(path)


def evaluate_export(model: torch.nn.Module, tokenizer: Any, sets: Sequence[EvalSetConfig], normalization: str,
                    caption_prefix: str, max_text_len: int) -> tuple[dict[str, float], dict[str, dict]]:
    """The stages' own functions: metrics '<set>/<encoder>/<metric>' and per set {format, n_images, n_captions}."""
    from data_pipelines.eval_sets import build_pair_eval_set
    from internvl_train.models.internvl_g.modeling import InternVLG
    from internvl_train.stages.common import model_dtype, to_device
    from internvl_train.stages.generative_eval import image_encoders, text_encoder
    from internvl_train.stages.image_text_eval import image_text_metrics

    device = next(model.parameters()).device
    st = SimpleNamespace(caption_prefix=caption_prefix, max_text_len=max_text_len)
    encoders = image_encoders(model) if isinstance(model, InternVLG) else \
        {"c": lambda pixels: model(pixels, task="encode_image")}
    metrics: dict[str, float] = {}
    counts: dict[str, dict] = {}
    for cfg in sets:
        eval_set = _Counted(build_pair_eval_set(cfg, model.config.vision.image_size, normalization))
        with torch.no_grad():
            metrics.update(image_text_metrics(eval_set, encoders, text_encoder(model, tokenizer, st, device),
                                              lambda b: to_device(b, device, model_dtype(model))))
        counts[cfg.name] = {"format": eval_set.format, "n_images": len(eval_set.keys), "n_captions": eval_set.rows,
                            **{k.rsplit("/", 1)[-1]: v for k, v in eval_set.metrics().items()}}
    return metrics, counts


def task_tables(metrics: dict[str, float], style: str = "markdown") -> dict[str, str]:
    """{'retrieval': table, 'zero-shot': table} (only the tasks present), rows = encoders."""
    from internvl_train.eval.tables import render_table, rows_by_encoder

    out = {}
    for task, keep in (("retrieval", lambda m: m.startswith(("i2t_", "t2i_")) or m == "mean_recall"),
                       ("zero-shot", lambda m: m.startswith("zeroshot_") and not m.endswith("_chance"))):
        rows = rows_by_encoder({k: v for k, v in metrics.items() if keep(k.rsplit("/", 1)[-1])})
        if rows:
            out[task] = render_table(rows, style=style)
    return out


def evaluate_vqa_specs(export: str, specs: Sequence[str], metric: str) -> dict[str, float]:
    """'vqa:QUESTIONS[:IMAGE_ROOT]' specs on a chat export: '<set>/vqa_accuracy', '<set>/majority_baseline', ..."""
    from internvl_train.eval.vqa_jsonl import evaluate_chat_export, read_questions

    metrics: dict[str, float] = {}
    for spec in specs:
        questions, _, image_root = spec[len(VQA_SPEC):].partition(":")
        name = os.path.splitext(os.path.basename(questions))[0]
        scores, _ = evaluate_chat_export(export, read_questions(questions, image_root or None), metric)
        metrics.update({f"{name}/{k}": v for k, v in scores.items()})
    return metrics


def _run_vqa(args: argparse.Namespace, specs: Sequence[str]) -> int:
    from internvl_train.eval.results import append_results
    from internvl_train.eval.tables import render_table

    metrics = evaluate_vqa_specs(args.export, specs, args.vqa_metric)
    shown = {k: v for k, v in metrics.items() if not k.endswith("/n_questions")}
    print(f"\nVQA\n\n{render_table({'InternVL-Chat': shown}, style=args.style)}")
    path = append_results(args.out, stage="eval", step=0, metrics=metrics, export=os.path.abspath(args.export))
    print(f"\nresults appended to {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from internvl_train.eval.results import append_results
    from internvl_train.stages.config import ContrastiveStageConfig

    parser = argparse.ArgumentParser(prog="python -m internvl_train.eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("export", help="a stage export directory (stages 1/2: set specs; stage 3: vqa: specs)")
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="eval sets (see below)")
    parser.add_argument("--out", default=".", help="directory of results.jsonl (default: .)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--normalization", default="imagenet", choices=["imagenet", "clip"],
                        help="image normalisation of training (data.normalization)")
    parser.add_argument("--caption-prefix", default=ContrastiveStageConfig.caption_prefix,
                        help="stage.caption_prefix of training (default %(default)r)")
    parser.add_argument("--max-text-len", type=int, default=ContrastiveStageConfig.max_text_len)
    parser.add_argument("--style", default="markdown", choices=["markdown", "plain"])
    parser.add_argument("--vqa-metric", default="exact_match", choices=VQA_METRICS,
                        help="vqa: specs: exact_match (answers are alternatives) or vqav2 (10 human answers)")
    args = parser.parse_args(argv)
    vqa_specs = [spec for spec in args.specs if spec.startswith(VQA_SPEC)]
    if vqa_specs:
        if len(vqa_specs) != len(args.specs):
            parser.exit(2, "error: vqa: specs evaluate a stage-3 export, the others a stage-1/2 export: "
                           "run them separately\n")
        return _run_vqa(args, vqa_specs)
    try:
        sets = [parse_spec(spec) for spec in args.specs]
    except (ConfigError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        parser.exit(2, f"error: two eval sets named alike ({names}): give one a name= (key=value form)\n")
    model, tokenizer = load_export(args.export, args.device, getattr(torch, args.dtype))
    metrics, counts = evaluate_export(model, tokenizer, sets, args.normalization, args.caption_prefix,
                                      args.max_text_len)
    for name, c in counts.items():
        print(f"{name} ({c['format']}): {c['n_images']} images, {c['n_captions']} captions")
    for task, table in task_tables(metrics, args.style).items():
        print(f"\n{task}\n\n{table}")
    path = append_results(args.out, stage="eval", step=0, metrics=metrics, export=os.path.abspath(args.export),
                          eval_sets=counts)
    print(f"\nresults appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
