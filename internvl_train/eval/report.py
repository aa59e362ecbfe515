"""Plots of a run: training curves from <run_dir>/metrics.jsonl and evaluation metrics from results.jsonl.

    python -m internvl_train.report RUN_DIR [--out DIR]

Writes <out>/losses.png (every 'loss/*' key against the step, plus any --keys given), <out>/eval.png (every
numeric evaluation metric against the step, one panel per metric group) and prints the last evaluation as a
paper-style table (eval.tables). Both rows of results.jsonl are read: the trainer's flat {"step", key: value}
and eval.results' {"step", "metrics": {...}}. Needs matplotlib (extras `report` and `dev`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

Series = dict[str, list[tuple[int, float]]]


def read_jsonl_series(path: Path) -> Series:
    """{key: [(step, value), ...]} of the numeric values of a JSONL file (nested 'metrics' flattened)."""
    series: Series = defaultdict(list)
    if not path.exists():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        values = {**{k: v for k, v in row.items() if k != "metrics"}, **(row.get("metrics") or {})}
        for key, value in values.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if key != "step" and numeric and math.isfinite(value):
                series[key].append((int(row.get("step", 0)), float(value)))
    return dict(series)


def _plot_panels(groups: dict[str, Series], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 3 * len(groups)), squeeze=False)
    for ax, (name, series) in zip(axes[:, 0], groups.items()):
        for key, points in sorted(series.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _eval_groups(series: Series) -> dict[str, Series]:
    """One panel per metric name after the data set / encoder prefix (i2t_R@1 of every set together)."""
    groups: dict[str, Series] = defaultdict(dict)
    for key, points in series.items():
        groups[key.rsplit("/", 1)[-1].split("_R@")[0]][key] = points
    return dict(sorted(groups.items()))


def write_report(run_dir: Path, out: Path, extra_keys: Sequence[str] = ()) -> list[Path]:
    """The PNGs written (none is written for a file that is absent or holds no numbers)."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    train = read_jsonl_series(run_dir / "metrics.jsonl")
    results = read_jsonl_series(run_dir / "results.jsonl")
    if not train and not results:
        raise FileNotFoundError(f"{run_dir}: neither metrics.jsonl nor results.jsonl holds any metric")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    losses = {k: v for k, v in train.items() if k.startswith("loss") or k in extra_keys}
    if losses:
        _plot_panels({"training losses": losses}, out / "losses.png", run_dir.name)
        written.append(out / "losses.png")
    if results:
        _plot_panels(_eval_groups(results), out / "eval.png", f"{run_dir.name}: evaluation")
        written.append(out / "eval.png")
    return written


def last_results_table(run_dir: Path) -> str:
    from internvl_train.eval.tables import render_table, rows_by_encoder

    last = {k: v[-1][1] for k, v in read_jsonl_series(run_dir / "results.jsonl").items()}
    return render_table(rows_by_encoder(last)) if last else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m internvl_train.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: <run_dir>/report)")
    parser.add_argument("--keys", nargs="*", default=[], help="more metrics.jsonl keys to plot with the losses")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.run_dir, args.out or args.run_dir / "report", args.keys)
    except FileNotFoundError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    table = last_results_table(args.run_dir)
    if table:
        print(table)
    return 0
