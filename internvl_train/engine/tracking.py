"""Experiment tracking on rank 0: W&B (online/offline) or nothing, plus <run_dir>/metrics.jsonl (always)
and a progress bar (TTY) or plain log lines."""
from __future__ import annotations

import json
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger("internvl_train.engine")
METRICS_FILE = "metrics.jsonl"


def has_wandb_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode not in ("auto", "online", "offline"):
        raise ValueError(f"logger.mode={mode!r}: expected auto, online or offline")
    if mode != "auto":
        return mode
    return "online" if has_wandb_login() else "offline"


def new_run_id() -> str:
    from wandb.sdk.lib.runid import generate_id

    return generate_id()


def drop_rows_after(path: Path, step: int) -> int:
    """Rewrite the JSONL file `path` without its rows of steps after `step`, atomically; how many it dropped.
    A run resuming from a checkpoint at `step` logs the later steps again: rows that a crashed attempt wrote
    after its last checkpoint would otherwise appear twice."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)


class Tracker:
    """Rank 0 logs; other ranks hold a no-op tracker. `run_id` is persisted in checkpoints."""

    def __init__(self, cfg: Any, rank: int, run_dir: Path, run_id: str | None, max_steps: int, start_step: int):
        self.rank = rank
        self.run_id = run_id
        self.metrics_path = run_dir / METRICS_FILE
        self.wandb_run = None
        self.bar = None
        if rank != 0:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.logger.backend == "wandb":
            self.wandb_run = self._start_wandb(cfg, run_dir)
        elif cfg.logger.backend != "none":
            raise ValueError(f"logger.backend={cfg.logger.backend!r}: expected wandb or none")
        if cfg.trainer.progress_bar == "on" or (cfg.trainer.progress_bar == "auto" and sys.stdout.isatty()):
            from tqdm import tqdm
            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _start_wandb(self, cfg: Any, run_dir: Path) -> Any:
        import wandb

        lg = cfg.logger
        self.run_id = self.run_id or new_run_id()
        return wandb.init(project=lg.project, entity=lg.entity, name=lg.name, tags=list(lg.tags),
                          id=self.run_id, resume="allow", dir=str(run_dir), mode=resolve_wandb_mode(lg.mode),
                          config=OmegaConf.to_container(cfg, resolve=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in metrics.items()
                                  if k.startswith("loss/") or k == "train/lr"}, refresh=False)
        else:
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            log.info("step %d %s", step, shown)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def close(self, exit_code: int = 0) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=exit_code)
            self.wandb_run = None
