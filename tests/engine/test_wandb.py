"""W&B offline: metric names reach the run file; a resumed run continues the same W&B run id.
Each start is its own process, as in real use (preempted job, then the requeued one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from toy_stage import SIGNAL_STEP_ENV
from wandb_reader import run_id_and_history_keys

from internvl_train.engine.signals import EXIT_PREEMPTED

RUN_TOY = Path(__file__).with_name("run_toy.py")


def run_toy(run_dir: Path, **env: str) -> int:
    env_all = {**os.environ, "WANDB_MODE": "offline", **env}
    env_all.pop("WANDB_API_KEY", None)
    args = [sys.executable, str(RUN_TOY), str(run_dir), 'logger.backend="wandb"', 'logger.mode="offline"',
            "trainer.save_every=0"]
    result = subprocess.run(args, env=env_all, capture_output=True, text=True, timeout=240)
    if result.returncode not in (0, EXIT_PREEMPTED):
        print(result.stdout[-3000:], result.stderr[-6000:])  # shown by pytest when the test fails
    return result.returncode


@pytest.mark.slow
def test_wandb_offline_metrics_and_resumed_run_id(tmp_path: Path) -> None:
    assert run_toy(tmp_path, **{SIGNAL_STEP_ENV: "1"}) == EXIT_PREEMPTED
    assert run_toy(tmp_path) == 0
    saved_id = json.loads((tmp_path / "checkpoints/step_6/trainer_state.json").read_text())["wandb_run_id"]
    run_files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 2  # first start and the resume, both offline
    (id1, keys1, steps1), (id2, keys2, steps2) = (run_id_and_history_keys(f) for f in run_files)
    assert id1 == id2 == saved_id != ""
    for name in ("loss/loss", "loss/mse", "train/lr", "train/grad_norm", "perf/samples_per_s",
                 "perf/data_wait_frac", "perf/tokens_per_s", "data/skipped/toy"):
        assert name in keys1, name
    assert "eval/val_mse" in keys2
    assert max(steps1) == 2 and min(steps2) >= 3
