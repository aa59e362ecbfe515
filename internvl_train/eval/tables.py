"""Results as a paper-style table: columns named like the InternVL paper's ("Flickr30K I->T R@1",
"ImageNet-1K top-1", "COCO Caption CIDEr"), values rounded, markdown or plain text.

Keys are ours: '<set>/<metric>' or '<set>/<encoder>/<metric>' (stages 1-2: encoders c, g, cg, g_itm become
rows InternVL-C, InternVL-G, ...). Captioning scores are printed x100 as papers do (pycocoevalcap gives
CIDEr 1.2 for the paper's 120); NaN / missing cells print as '-'.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

DATASETS = {"flickr30k": "Flickr30K", "flickr30k_cn": "Flickr30K-CN", "coco": "COCO", "mscoco": "COCO",
            "coco_caption": "COCO Caption", "nocaps": "NoCaps", "imagenet": "ImageNet-1K", "imagenet1k": "ImageNet-1K",
            "vqav2": "VQAv2", "okvqa": "OKVQA", "textvqa": "TextVQA", "vizwiz": "VizWiz", "gqa": "GQA"}
ENCODERS = {"c": "InternVL-C", "g": "InternVL-G", "cg": "InternVL-G (C+G)", "g_itm": "InternVL-G + ITM re-rank"}
_METRICS = {"i2t": "I->T", "t2i": "T->I", "zeroshot_top1": "top-1", "zeroshot_top5": "top-5",
            "zeroshot_mean_per_class_recall": "mean per-class recall", "mean_recall": "mean recall",
            "caption/bleu4": "BLEU-4", "caption/cider": "CIDEr", "bleu4": "BLEU-4", "cider": "CIDEr",
            "vqa_accuracy": "accuracy", "vqav2_accuracy": "VQAv2 accuracy", "exact_match_accuracy": "exact match"}
_X100 = ("bleu4", "cider", "baseline_bleu4", "baseline_cider")


def column_name(key: str) -> str:
    """'flickr30k/i2t_R@1' -> 'Flickr30K I->T R@1'; 'imagenet/zeroshot_top1' -> 'ImageNet-1K top-1'."""
    dataset, _, metric = key.partition("/")
    if not metric:
        return key
    for prefix, name in _METRICS.items():
        if metric == prefix:
            metric = name
            break
        if prefix in ("i2t", "t2i") and metric.startswith(prefix + "_"):
            metric = f"{name} {metric[len(prefix) + 1:].replace('_', ' ')}"
            break
    return f"{DATASETS.get(dataset.lower(), dataset)} {metric}"


def paper_value(key: str, value: float | None) -> float | None:
    """Captioning scores x100 (paper scale); everything else as stored (already percent)."""
    if value is None:
        return None
    return 100.0 * value if key.rsplit("/", 1)[-1] in _X100 else float(value)


def rows_by_encoder(metrics: Mapping[str, float], default_row: str = "model") -> dict[str, dict[str, float]]:
    """{'InternVL-C': {'<set>/<metric>': v}, ...} from flat stage keys '<set>/<encoder>/<metric>'."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[1] in ENCODERS:
            rows.setdefault(ENCODERS[parts[1]], {})[f"{parts[0]}/{parts[2]}"] = value
        else:
            rows.setdefault(default_row, {})[key] = value
    return rows


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def render_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str] | None = None, digits: int = 1,
                 style: str = "markdown") -> str:
    """One line per row label, one column per metric key (default: every key, in first-seen order), named by
    `column_name` and rounded to `digits`. style: 'markdown' (a pipe table) or 'plain' (aligned text)."""
    if style not in ("markdown", "plain"):
        raise ValueError(f"render_table: style must be 'markdown' or 'plain', got {style!r}.")
    keys = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows.values() for k in r))
    header = ["", *(column_name(k) for k in keys)]
    body = [[label, *(_cell(paper_value(k, r.get(k)), digits) for k in keys)] for label, r in rows.items()]
    if style == "markdown":
        lines = [header, ["---"] * len(header), *body]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body])
