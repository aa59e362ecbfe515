"""What a run leaves besides checkpoints: results.jsonl (one row per evaluation) and export/ (the stage's
result). Both are written so a rerun can tell what is done: the export is renamed into place only when
complete, and the final evaluation is found by its step."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from internvl_train.engine.checkpoint import STATE_FILE, TMP_PREFIX

RESULTS_FILE = "results.jsonl"
EXPORT_DIR = "export"


def recorded_results(run_dir: Path, step: int) -> dict[str, float] | None:
    """The evaluation results.jsonl holds for `step` (its last row for that step), else None."""
    path = run_dir / RESULTS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    found = [r for r in rows if r.get("step") == step]
    return {k: v for k, v in found[-1].items() if k != "step"} if found else None


def append_results(run_dir: Path, step: int, results: dict[str, float]) -> None:
    with open(run_dir / RESULTS_FILE, "a") as f:
        f.write(json.dumps({"step": step, **results}) + "\n")


def export_done(run_dir: Path) -> bool:
    return (run_dir / EXPORT_DIR).is_dir()


def write_export(run_dir: Path, write: Callable[[str], None]) -> None:
    """`write(directory)` into a temporary directory, then replace export/ with it."""
    final, tmp = run_dir / EXPORT_DIR, run_dir / f"{TMP_PREFIX}{EXPORT_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def finished_results(run_dir: Path, checkpoint: Path | None, max_steps: int) -> dict[str, float] | None:
    """The final results when `checkpoint` (the one a rerun would resume) is at max_steps or later and its
    evaluation and export exist: the run is complete. None otherwise."""
    if checkpoint is None:
        return None
    step = json.loads((checkpoint / STATE_FILE).read_text())["step"]
    results = recorded_results(run_dir, step) if step >= max_steps else None
    return results if results is not None and export_done(run_dir) else None
