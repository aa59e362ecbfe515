"""Helpers for the config tests: compose in-process with Hydra's compose API, or run the real CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from internvl_train.app import CONFIG_DIR
from internvl_train.config import register_configs

REPO_ROOT = Path(__file__).resolve().parents[2]


def searchpath_override(extra_dirs: Sequence[Path]) -> list[str]:
    """Hydra override adding config directories (searched after configs/)."""
    return [f"hydra.searchpath=[{','.join(f'file://{d}' for d in extra_dirs)}]"] if extra_dirs else []


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """compose_cfg(overrides, extra_dirs=()) -> the composed root config, exactly as the CLI sees it."""
    register_configs()

    def _compose(overrides: Sequence[str] = (), extra_dirs: Sequence[Path] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=[*searchpath_override(extra_dirs), *overrides])

    return _compose


def run_cli(args: Sequence[str], cwd: Path, code: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m internvl_train <args>` (or `python -c <code> <args>`) in `cwd`; (result, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, *(["-c", code] if code else ["-m", "internvl_train"]), *args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - start


@pytest.fixture
def cli() -> Callable[..., tuple[subprocess.CompletedProcess, float]]:
    """cli(args, cwd, code=None) -> (result, seconds): the real command line in a subprocess."""
    return run_cli


@pytest.fixture
def chat_model_dir(tmp_path_factory) -> Path:
    """A config dir with model option `chat_fixture`: the default model plus a tiny inline chat LLM."""
    root = tmp_path_factory.mktemp("chat_configs")
    (root / "model").mkdir()
    (root / "model" / "chat_fixture.yaml").write_text(
        "defaults:\n  - /schema/model@_here_\n  - _self_\n\nchat:\n  llm:\n    hidden_size: 64\n")
    return root
