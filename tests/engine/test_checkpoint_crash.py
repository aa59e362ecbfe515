"""Checkpoint crash safety with the real DeepSpeed engine: a run SIGKILLed at each point of the save
protocol (engine/checkpoint.py; hook PAUSE_ENV) resumes from a complete checkpoint and ends bit-identical
to an uninterrupted run; a `latest` naming a missing or partial directory is tolerated."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_same_tensors, exported, losses_by_step

from internvl_train.engine.checkpoint import PAUSE_ENV, CheckpointManager, is_complete

RUN_TOY = str(Path(__file__).with_name("run_toy.py"))
# ZeRO-1 on one process: DeepSpeed writes two engine files (model states, then optimizer partition).
OPTS = {"trainer.max_steps": 6, "trainer.save_every": 2, "deepspeed.zero_stage": 1}
MODEL_FILE, OPTIM_FILE = "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def toy(run_dir: Path) -> list[str]:
    return [sys.executable, RUN_TOY, str(run_dir), *(f"{k}={v}" for k, v in OPTS.items())]


def run_to_end(run_dir: Path) -> str:
    proc = subprocess.run(toy(run_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def kill_inside_save(run_dir: Path, pause: str) -> None:
    """Run until the save reaches PAUSE_ENV=pause, then SIGKILL."""
    proc = subprocess.Popen(toy(run_dir), env={**os.environ, PAUSE_ENV: pause},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run_dir / "save_paused").exists():
        assert proc.poll() is None and time.time() < deadline, f"the run never reached the save pause {pause}"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir / "save_paused").unlink()


def latest_name(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    run_to_end(run_dir)
    return run_dir


def assert_like_reference(run_dir: Path, reference: Path) -> None:
    assert losses_by_step(run_dir) == losses_by_step(reference)
    assert_same_tensors(exported(run_dir), exported(reference))
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp_")]


@pytest.mark.slow
def test_sigkill_while_deepspeed_writes_resumes_from_the_previous_checkpoint(tmp_path: Path, reference: Path):
    kill_inside_save(tmp_path, "4:engine")
    ckpts = tmp_path / "checkpoints"
    engine_files = {p.name for p in (ckpts / ".tmp_step_4" / "engine").rglob("*.pt")}
    assert MODEL_FILE in engine_files and OPTIM_FILE not in engine_files  # killed mid-way through DeepSpeed
    assert not (ckpts / "step_4").exists() and latest_name(tmp_path) == "step_2"
    out = run_to_end(tmp_path)
    assert f"resumed from {ckpts / 'step_2'} at step 2" in out
    assert_like_reference(tmp_path, reference)


@pytest.mark.slow
def test_sigkill_between_rename_and_latest_update_resumes_from_a_complete_one(tmp_path: Path, reference: Path):
    kill_inside_save(tmp_path, "4:renamed")
    ckpts = tmp_path / "checkpoints"
    assert is_complete(ckpts / "step_4") and latest_name(tmp_path) == "step_2"
    out = run_to_end(tmp_path)  # resumes from step_2, the one `latest` names, and saves step_4 over again
    assert f"resumed from {ckpts / 'step_2'} at step 2" in out
    assert_like_reference(tmp_path, reference)


@pytest.mark.slow
def test_latest_naming_a_partial_checkpoint_resumes_from_the_newest_complete_one(tmp_path: Path,
                                                                                reference: Path):
    kill_inside_save(tmp_path, "6")  # step_2 and step_4 published, latest = step_4
    ckpts = tmp_path / "checkpoints"
    assert latest_name(tmp_path) == "step_4"
    (ckpts / "step_4" / "engine" / OPTIM_FILE).unlink()  # damaged: loses a file its manifest lists
    assert not is_complete(ckpts / "step_4")
    out = run_to_end(tmp_path)
    assert "names step_4, which is missing or incomplete" in out
    assert f"resumed from {ckpts / 'step_2'} at step 2" in out
    assert_like_reference(tmp_path, reference)


def fake_checkpoint(root: Path, step: int) -> Path:
    """A directory with the layout save() publishes, its manifest last."""
    from internvl_train.engine.checkpoint import write_manifest

    path = root / "checkpoints" / f"step_{step}"
    (path / "engine").mkdir(parents=True)
    (path / "engine" / "weights.pt").write_bytes(b"x" * 100)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": 1}))
    write_manifest(path)
    return path


def test_latest_naming_a_missing_directory_falls_back_to_the_newest_complete_one(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 2)
    newest = fake_checkpoint(tmp_path, 4)
    (tmp_path / "checkpoints" / "latest").write_text("step_6\n")  # crashed between a rename and its update
    assert CheckpointManager(tmp_path, keep_last=2, rank=0).latest() == newest


def test_a_truncated_file_makes_a_checkpoint_incomplete(tmp_path: Path) -> None:
    older, newest = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    (newest / "engine" / "weights.pt").write_bytes(b"x" * 10)
    mgr = CheckpointManager(tmp_path, keep_last=2, rank=0)
    assert mgr.complete_checkpoints() == [older] and mgr.resolve_resume("auto") == older
