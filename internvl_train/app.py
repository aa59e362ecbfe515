"""The command line: `python -m internvl_train stage=<name> [experiment=<recipe>] [key=value ...]`.

The only module that knows Hydra. Order matters: compose (Hydra rejects unknown keys and wrong types),
validate (ranges, choices, paths), and only then import torch, start the process group and build the stage.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from internvl_train.config import check_run_config, register_configs, write_resolved_config
from internvl_train.errors import ConfigError

if TYPE_CHECKING:
    from internvl_train.engine.stage_api import Stage

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
EXIT_CONFIG_ERROR = 2


def run(cfg: DictConfig, stage_cls: Optional[type[Stage]] = None) -> None:
    """Validate `cfg`, then train (mode=train) or evaluate (mode=eval) its stage.

    A bad config exits with code 2 and one line `config error: <key>: <reason>`; the checks of the
    config itself run before torch is imported. `stage_cls` replaces the registry's class for
    `cfg.stage.name` (custom or test stages)."""
    try:
        _validate_and_run(cfg, stage_cls)
    except ConfigError as err:
        print(f"config error: {err.key}: {err.reason}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def _validate_and_run(cfg: DictConfig, stage_cls: Optional[type[Stage]]) -> None:
    check_run_config(cfg)
    OmegaConf.resolve(cfg)

    from internvl_train.engine.distributed import init_distributed
    from internvl_train.engine.trainer import Trainer
    from internvl_train.stages import get_stage_class

    stage_cls = stage_cls or get_stage_class(cfg.stage.name)
    dist = init_distributed(cfg.trainer.dist_timeout_s)
    if dist.rank == 0:
        write_resolved_config(cfg, Path(cfg.run_dir) / "config.yaml", _command_line())
    trainer = Trainer(cfg, stage_cls(cfg, dist), dist)
    if cfg.mode == "train":
        trainer.fit()
    else:
        trainer.evaluate()


def _command_line() -> str:
    """The command that composed the config, from Hydra's record of the overrides."""
    if not HydraConfig.initialized():
        return "composed in Python and passed to internvl_train.app.run"
    overrides = OmegaConf.to_container(HydraConfig.get().overrides, resolve=False)  # as typed: ${...} kept
    args = [o for o in overrides["hydra"] if not o.startswith("hydra.mode=")] + overrides["task"]
    return shlex.join(["python", "-m", "internvl_train", *args])


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def _compose_and_run(cfg: DictConfig) -> None:
    run(cfg)


def _reject_unknown_override_keys(args: list[str]) -> None:
    """Compose once before Hydra does, to name an override of an unknown key with a "did you mean" (Hydra's
    own message suggests `+key`, which a typed node would ignore). Other composition errors, and command
    lines with flags (--multirun, --cfg, ...), are left to Hydra's own reporting."""
    if any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from internvl_train.config_keys import composition_key_error

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose("config", overrides=args)
    except ConfigCompositionException as err:
        key_error = composition_key_error(err)
        if key_error is not None:
            print(f"config error: {key_error.key}: {key_error.reason}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG_ERROR) from None


def main() -> None:
    """Entry point of `python -m internvl_train`: register the schemas, let Hydra compose, run."""
    register_configs()
    _reject_unknown_override_keys(sys.argv[1:])
    _compose_and_run()
