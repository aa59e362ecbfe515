"""Helpers for the planner tests: compose a run config in-process, run the planner's command line."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    from internvl_train.plan.cli import compose_run_config

    return compose_run_config(list(overrides))


def run_planner(args: Sequence[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m internvl_train.plan <args>` in `cwd` (no runs/, no data there); (result, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "internvl_train.plan", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=180)
    return result, time.monotonic() - start
