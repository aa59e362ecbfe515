"""Atomic, complete checkpoints: <run_dir>/checkpoints/step_<N>/ becomes visible only when whole.

Layout of one checkpoint:
    step_<N>/engine/...            DeepSpeed engine state (module, optimizer, ZeRO partitions), all ranks
    step_<N>/trainer_state.json    step, samples/tokens seen, W&B run id, world size, config + its hash
    step_<N>/rank_<r>.pt           per rank: data-loader position, Python/NumPy/torch(/CUDA) RNG states
    checkpoints/latest             name of the newest complete checkpoint (replaced atomically)

Protocol: every rank writes into checkpoints/.tmp_step_<N>; barrier; rank 0 writes manifest.json (every
file and its size), fsyncs, renames the directory to step_<N> (a step_<N> it replaces is first renamed
aside), then replaces `latest` (write temp + fsync + os.replace). Directories are only ever removed after a
rename to a .tmp_ name, so a step_<N> directory is whole at every instant. A crash at any point leaves the
old or the new checkpoint complete; leftover .tmp_* directories are ignored and removed at the next start.
Resuming trusts `latest` when it names a complete checkpoint (one whose manifest matches its files), else
takes the newest complete one: a `latest` naming a missing or partial directory is tolerated.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from internvl_train.engine.collectives import barrier

ENGINE_TAG = "engine"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"
TMP_PREFIX = ".tmp_"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Test hook: `<N>[:<point>]` pauses (sleeps) inside the save of step N at that point, having touched
# <run_dir>/save_paused, so a test can kill the process there. Points: `engine` (DeepSpeed is writing: after
# its first file), `written` (the default: every file written, nothing published), `renamed` (step_<N>
# published, `latest` not yet updated).
PAUSE_ENV = "INTERNVL_TRAIN_TEST_PAUSE_IN_SAVE_STEP"
PAUSE_POINTS = ("engine", "written", "renamed")

log = logging.getLogger("internvl_train.engine")


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


def file_sizes(root: Path) -> dict[str, int]:
    """Every file under root (relative path -> size in bytes), the manifest itself excluded."""
    return {str(f.relative_to(root)): f.stat().st_size for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != MANIFEST_FILE}


def write_manifest(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    write_atomic(root / MANIFEST_FILE, json.dumps({"files": file_sizes(root)}, indent=1))


def is_complete(path: Path) -> bool:
    """A checkpoint directory whose state file parses and whose files are all there with the sizes its
    manifest recorded. Checkpoints written before manifests existed need only a parseable state file."""
    try:
        json.loads((path / STATE_FILE).read_text())
        manifest = path / MANIFEST_FILE
        if not manifest.is_file():
            return True
        recorded = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    found = file_sizes(path)
    return all(found.get(name) == size for name, size in recorded.items())


def discard(path: Path) -> None:
    """Remove a directory so that it is never seen half-deleted: rename it to a .tmp_ name, then delete."""
    trash = path.with_name(f"{TMP_PREFIX}discard_{path.name}.{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


class CheckpointManager:
    """Saves, finds, loads and prunes the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, keep_last: int, rank: int):
        self.root = Path(run_dir) / "checkpoints"
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.rank = rank

    # ---- discovery ------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (see is_complete)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found) if is_complete(p)]

    def latest(self) -> Path | None:
        """The checkpoint `latest` names when it is complete, else the newest complete one, else None."""
        pointer = self.root / LATEST_FILE
        named = self.root / pointer.read_text().strip() if pointer.is_file() else None
        if named is not None and is_complete(named):
            return named
        complete = self.complete_checkpoints()
        fallback = complete[-1] if complete else None
        if named is not None and self.rank == 0:
            log.warning("%s names %s, which is missing or incomplete; using the newest complete checkpoint "
                        "instead: %s", pointer, named.name, fallback or "none")
        return fallback

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
        self._pause_inside_engine_write(engine, step)
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        torch.save(rank_state, tmp / f"rank_{self.rank}.pt")
        if self.rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True))
        barrier()
        self._maybe_pause(step, "written")
        if self.rank == 0:
            self._publish(tmp, final, step)
        barrier()
        return final

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        write_manifest(tmp)
        if final.exists():  # a re-save of the same step (e.g. resumed from an older checkpoint)
            discard(final)
        os.rename(tmp, final)
        fsync_dir(self.root)
        self._maybe_pause(step, "renamed")
        write_atomic(self.root / LATEST_FILE, final.name + "\n")
        self.prune()

    # ---- test hook (PAUSE_ENV) ------------------------------------------------------------------
    def _pause_requested(self, step: int, point: str) -> bool:
        value = os.environ.get(PAUSE_ENV, "")
        return value == f"{step}:{point}" or (point == "written" and value == str(step))

    def _maybe_pause(self, step: int, point: str) -> None:
        if self._pause_requested(step, point):
            (self.run_dir / "save_paused").touch()
            time.sleep(3600)

    def _pause_inside_engine_write(self, engine: Any, step: int) -> None:
        """PAUSE_ENV=<step>:engine: pause once DeepSpeed's checkpoint engine has written its first file."""
        if not self._pause_requested(step, "engine"):
            return
        writer = engine.checkpoint_engine
        original = writer.save

        def save_then_pause(*args: Any, **kwargs: Any) -> Any:
            original(*args, **kwargs)
            self._maybe_pause(step, "engine")

        writer.save = save_then_pause

    def prune(self) -> None:
        """Keep the newest keep_last checkpoints and always the one `latest` names (keep_last<=0: all)."""
        if self.keep_last <= 0:
            return
        keep = set(self.complete_checkpoints()[-self.keep_last:])
        latest = self.latest()
        for path in self.complete_checkpoints():
            if path not in keep and path != latest:
                discard(path)

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
