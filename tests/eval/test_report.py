"""`python -m internvl_train.report`: PNGs from a generated run dir; a clear failure on a missing one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_train.eval.report import read_jsonl_series, write_report
from internvl_train.eval.results import append_results

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(10, 110, 10):
            f.write(json.dumps({"step": step, "loss/itc": 4 / step, "loss/loss": 5 / step, "train/lr": 1e-3}) + "\n")
    with (run_dir / "results.jsonl").open("w") as f:  # the trainer's flat rows
        f.write(json.dumps({"step": 50, "flickr30k/c/i2t_R@1": 10.0, "flickr30k/c/zeroshot_top5": None}) + "\n")
    append_results(run_dir, "contrastive", 100, {"flickr30k/c/i2t_R@1": 20.0, "flickr30k/c/t2i_R@1": 15.0})


def test_report_writes_non_empty_pngs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run)
    assert read_jsonl_series(run / "results.jsonl")["flickr30k/c/i2t_R@1"] == [(50, 10.0), (100, 20.0)]
    r = subprocess.run([sys.executable, "-m", "internvl_train.report", str(run)], capture_output=True, text=True,
                       timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    for name in ("losses.png", "eval.png"):
        data = (run / "report" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert "| InternVL-C | 20.0 | 15.0 |" in r.stdout


def test_report_fails_clearly_on_a_missing_or_empty_dir(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "internvl_train.report", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 2 and "no such run directory" in r.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither metrics.jsonl nor results.jsonl"):
        write_report(tmp_path / "empty", tmp_path / "out")
