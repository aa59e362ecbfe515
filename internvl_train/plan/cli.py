"""`python -m internvl_train.plan <run overrides> [plan.gpus=N plan.gpu_mem_gb=80 plan.peak_tflops=989 plan.mfu=0.4]`.

Composes the run config exactly as `python -m internvl_train` does (same Hydra tree and schemas, unknown keys
rejected), but runs none of the run-time checks (paths, shards, weights): a recipe is planned before its data
exists. Exit 2 with `config error: <key>: <reason>` for a bad plan key or override.
"""
from __future__ import annotations

import shlex
import sys
from typing import Optional, Sequence

from omegaconf import DictConfig

from internvl_train.errors import ConfigError
from internvl_train.plan.settings import PlanSettings, split_plan_overrides

EXIT_CONFIG_ERROR = 2


def compose_run_config(overrides: Sequence[str]) -> DictConfig:
    """The run config for `overrides`, composed and key-checked but not validated (no path checks)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from internvl_train.app import CONFIG_DIR
    from internvl_train.config import register_configs
    from internvl_train.config_keys import check_known_keys, composition_key_error

    register_configs()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except ConfigCompositionException as err:
        key_error = composition_key_error(err)
        raise key_error if key_error is not None else ConfigError("<overrides>", str(err)) from None
    check_known_keys(cfg)
    return cfg


def plan_text(args: Sequence[str]) -> str:
    """The table for a command line's arguments (plan.* keys and run overrides mixed)."""
    settings, overrides = split_plan_overrides(args)
    return plan_text_for(compose_run_config(overrides), settings, shlex.join(args))


def plan_text_for(cfg: DictConfig, settings: PlanSettings, command: str) -> str:
    from internvl_train.plan.planner import build_plan
    from internvl_train.plan.report import format_plan

    return format_plan(build_plan(cfg, settings), command)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        print(plan_text(args), end="")
    except ConfigError as err:
        print(f"config error: {err.key}: {err.reason}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
