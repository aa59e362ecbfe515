"""Append evaluation results to <run_dir>/results.jsonl: one JSON line per evaluation, never rewritten."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

RESULTS_FILE = "results.jsonl"


def append_results(run_dir: str | Path, stage: str, step: int, metrics: Mapping[str, float], **extra: Any) -> Path:
    """Append {'time', 'stage', 'step', 'metrics', **extra}; call it on rank 0 only. Non-finite metric values
    are written as null (JSON has no NaN) so the file stays parseable by any JSON reader."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage": stage, "step": int(step),
              "metrics": clean, **extra}
    line = json.dumps(record, sort_keys=False) + "\n"
    with path.open("a", encoding="utf-8") as f:  # one write of a whole line: no interleaved partial records
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of <run_dir>/results.jsonl in order ([] when none yet)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
