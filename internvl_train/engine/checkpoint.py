"""Atomic, complete checkpoints: <run_dir>/checkpoints/step_<N>/ becomes visible only when whole.

Layout of one checkpoint:
    step_<N>/engine/...            DeepSpeed engine state (module, optimizer, ZeRO partitions), all ranks
    step_<N>/trainer_state.json    step, samples/tokens seen, W&B run id, world size, config + its hash
    step_<N>/rank_<r>.pt           per rank: data-loader position, Python/NumPy/torch(/CUDA) RNG states
    checkpoints/latest             name of the newest complete checkpoint (replaced atomically)

Protocol: every rank writes into checkpoints/.tmp_step_<N>; barrier; rank 0 renames the directory to
step_<N>, then replaces `latest` (write temp + fsync + os.replace). A crash at any point leaves either the
old or the new checkpoint complete; leftover .tmp_* directories are ignored and removed at the next start.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvl_train.engine.distributed import barrier

ENGINE_TAG = "engine"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
TMP_PREFIX = ".tmp_"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Test hook: pause (sleep) inside the save of this step, after the files are written and before the
# checkpoint is published, having touched <run_dir>/save_paused, so a test can kill the process there.
PAUSE_ENV = "INTERNVL_TRAIN_TEST_PAUSE_IN_SAVE_STEP"


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class CheckpointManager:
    """Saves, finds, loads and prunes the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.root = Path(run_dir) / "checkpoints"
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.rank = rank

    # ---- discovery ------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        """Published checkpoints, oldest first (a step_<N> directory exists only when complete)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, else the newest complete one, else None."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if (named / STATE_FILE).is_file():
                return named
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def resolve_resume(self, resume: str) -> Path | None:
        """resume=auto -> newest complete checkpoint or None; never -> None; else that directory."""
        if resume == "never":
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume={resume}: not a checkpoint directory (no {STATE_FILE}); "
                                    f"pass a {self.root}/step_<N> directory, resume=auto or resume=never")
        return path

    def clean_incomplete(self) -> None:
        """Remove leftovers of interrupted saves (rank 0, before anyone saves)."""
        if self.rank == 0 and self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        barrier()

    # ---- save -----------------------------------------------------------------------------------
    def save(self, engine: Any, step: int, trainer_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """Collective: every rank calls it. Returns the published directory."""
        tmp, final = self.root / f"{TMP_PREFIX}step_{step}", self.root / f"step_{step}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        torch.save(rank_state, tmp / f"rank_{self.rank}.pt")
        if self.rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
        barrier()
        self._maybe_pause(step)
        if self.rank == 0:
            self._publish(tmp, final)
        barrier()
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():  # a re-save of the same step (e.g. preempted right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(self.root)
        write_atomic(self.root / LATEST_FILE, final.name + "\n")
        self.prune()

    def _maybe_pause(self, step: int) -> None:
        if os.environ.get(PAUSE_ENV) == str(step):
            (self.run_dir / "save_paused").touch()
            time.sleep(3600)

    def prune(self) -> None:
        """Keep the newest keep_last checkpoints and always the one `latest` names (keep_last<=0: all)."""
        if self.keep_last <= 0:
            return
        keep = set(self.complete_checkpoints()[-self.keep_last:])
        latest = self.latest()
        for path in self.complete_checkpoints():
            if path not in keep and path != latest:
                shutil.rmtree(path, ignore_errors=True)

    # ---- load -----------------------------------------------------------------------------------
    def load(self, engine: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load engine state (all ranks); return (trainer_state, this rank's state)."""
        state = json.loads((path / STATE_FILE).read_text())
        rank_file = path / f"rank_{self.rank}.pt"
        if not rank_file.is_file():
            raise FileNotFoundError(f"{rank_file} missing: the checkpoint was written by "
                                    f"{state.get('world_size')} ranks; resume with the same number of ranks")
        load_path, _ = engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the engine state from {path / ENGINE_TAG}")
        return state, torch.load(rank_file, weights_only=False)

    def load_module_only(self, engine: Any, path: Path) -> dict[str, Any]:
        """Load only the model weights (evaluation); returns the trainer state."""
        load_path, _ = engine.load_checkpoint(str(path), tag=ENGINE_TAG, load_module_only=True,
                                              load_optimizer_states=False, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the model weights from {path / ENGINE_TAG}")
        return json.loads((path / STATE_FILE).read_text())
