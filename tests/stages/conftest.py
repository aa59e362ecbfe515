"""Fixtures for the stage tests: the real Hydra composition of a tiny stage-3 run on the demo conversations."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

from internvl_train.engine.stage_api import DistInfo
from sft_helpers import compose_sft


@pytest.fixture(scope="session")
def dist() -> DistInfo:
    from internvl_train.engine.distributed import init_distributed

    torch.set_num_threads(1)
    return init_distributed(timeout_s=60)


@pytest.fixture
def sft_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """sft_cfg(*overrides, run="run") -> config of a tiny SFT run in tmp_path/run (scratch ViT by default)."""

    def make(*overrides: str, run: str = "run") -> DictConfig:
        defaults = [] if any(o.startswith(("init_from=", "stage.vision_init=")) for o in overrides) \
            else ["stage.vision_init=scratch"]
        return compose_sft(tmp_path / run, [*defaults, *overrides])

    return make
