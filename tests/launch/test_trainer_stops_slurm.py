"""The real trainer stopped by SLURM (scancel, the time limit, SIGINT, a signal during the final evaluation,
a rank dying at start-up) on the real local cluster: tiny demo stage-1 jobs on CPU."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from launch_helpers import REPO, TRAIN_SBATCH, SlurmCluster, wait_for_lines

from internvl_train.engine.checkpoint import CheckpointManager, is_complete

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# Steps of ~1 s on CPU; periodic checkpoints off, so a checkpoint on disk comes from the stop itself.
DEMO = ["stage=contrastive", "data=demo", "data.num_workers=1", "trainer.micro_batch_size=2",
        "trainer.log_every=1", "trainer.save_every=0", "trainer.progress_bar=off", "logger=none"]
LONG_RUN = [*DEMO, "trainer.max_steps=100000"]


def submit(cluster: SlurmCluster, run_dir: Path, overrides: list[str], *sbatch_args: str) -> str:
    out = cluster.run("sbatch", "--parsable", f"--output={run_dir}.out", *sbatch_args, TRAIN_SBATCH, *overrides,
                      f"run_dir={run_dir}", extra_env={"PYTHON": sys.executable}, cwd=REPO).stdout
    return out.strip().split(";")[0]


def job_log(run_dir: Path) -> str:
    return Path(f"{run_dir}.out").read_text()


def wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} did not show {text!r} within {timeout_s}s")


def saved_step(run_dir: Path, signal_name: str) -> int:
    """The step the stop message names; checks that it is the complete checkpoint a rerun resumes from."""
    found = re.search(rf"{signal_name} received: checkpoint saved at step (\d+) \((\S+)\)", job_log(run_dir))
    assert found, job_log(run_dir)[-3000:]
    latest = CheckpointManager(run_dir, keep_last=0, rank=0).latest()
    assert latest is not None and is_complete(latest) and str(latest) == found[2]
    return int(found[1])


def training_steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if any(k.startswith("loss/") for k in r)]


def test_scancel_saves_a_checkpoint_and_the_job_stays_cancelled(slurm_cluster: SlurmCluster, tmp_path: Path):
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, LONG_RUN, "--ntasks-per-node=2")
    wait_for_lines(run_dir / "metrics.jsonl", 2, timeout_s=300)
    slurm_cluster.run("scancel", job)
    info = slurm_cluster.wait(job, timeout_s=120)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", job_log(run_dir)[-3000:]
    assert saved_step(run_dir, "SIGTERM") >= 2
    log = job_log(run_dir)
    assert "not requeueing here" in log
    # The trainer rendezvoused where the script said (its MASTER_ADDR/MASTER_PORT reached both ranks).
    master = re.search(r"master=(\S+:\d+) launcher=", log)[1]
    assert re.search(rf"^0: .*rank 0 of 2 \(slurm\), rendezvous on {re.escape(master)}$", log, re.M), log[-3000:]
    assert re.search(rf"^1: .*rank 1 of 2 \(slurm\), rendezvous on {re.escape(master)}$", log, re.M)


def test_the_time_limit_saves_a_checkpoint(slurm_cluster: SlurmCluster, tmp_path: Path):
    """The limit's own SIGTERM (no warning signal ahead of it: --signal=B:USR1@0 replaces the script's @300).
    Two minutes, not one: start-up on a busy 2-core machine can take most of a minute."""
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, LONG_RUN, "--time=2", "--signal=B:USR1@0")
    info = slurm_cluster.wait(job, timeout_s=300)
    assert info["JobState"] == "TIMEOUT" and info["Restarts"] == "0", job_log(run_dir)[-3000:]
    assert "received SIGUSR1" not in job_log(run_dir)
    assert saved_step(run_dir, "SIGTERM") >= 1


def test_sigint_saves_a_checkpoint_and_exits_130(slurm_cluster: SlurmCluster, tmp_path: Path):
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, LONG_RUN)
    wait_for_lines(run_dir / "metrics.jsonl", 2, timeout_s=300)
    slurm_cluster.run("scancel", "--signal=INT", job)  # to the training step's tasks, like Ctrl-C
    info = slurm_cluster.wait(job, timeout_s=120)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "130:0", job_log(run_dir)[-3000:]
    assert info["Restarts"] == "0"
    assert saved_step(run_dir, "SIGINT") >= 2


def test_sigterm_during_the_final_evaluation_stops_and_the_requeued_start_finishes(slurm_cluster: SlurmCluster,
                                                                                  tmp_path: Path):
    """SIGTERM to the step (not the job) once the final checkpoint is saved: the evaluation (~15 s) is cut
    short, the trainer exits 75, the script requeues, and the restart only evaluates and exports."""
    run_dir, steps = tmp_path / "run", 3
    job = submit(slurm_cluster, run_dir, [*DEMO, f"trainer.max_steps={steps}"])
    final = run_dir / "checkpoints" / f"step_{steps}"
    wait_for_text(Path(f"{run_dir}.out"), f"saved checkpoint {final}", timeout_s=300)
    assert not (run_dir / "results.jsonl").exists()
    slurm_cluster.run("scancel", "--signal=TERM", job)
    info = slurm_cluster.wait(job, timeout_s=300)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    assert f"SIGTERM received during the final evaluation: stopping, exit 75. The last checkpoint is {final}" in log
    assert f"resumed from {final} at step {steps}" in log
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in results] == [steps]  # evaluated once, by the restart
    assert training_steps(run_dir) == [1, 2, 3]  # nothing trained again
    assert (run_dir / "export").is_dir() and is_complete(final)


def task_pid(job: str, procid: int, timeout_s: float) -> int:
    """The pid of the trainer task with this SLURM_PROCID in the job (same machine: one-node cluster)."""
    wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={procid}".encode()}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                environ = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:  # not a process, or gone
                continue
            if b"internvl_train" in cmdline and wanted <= environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no task {procid} of job {job} within {timeout_s}s")


def test_a_rank_killed_at_start_up_ends_the_job_at_once(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Without srun --kill-on-bad-exit rank 0 would wait trainer.dist_timeout_s (30 min) for rank 1."""
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, run_dir, [*LONG_RUN, "trainer.dist_timeout_s=1800"], "--ntasks-per-node=2")
    os.kill(task_pid(job, 1, timeout_s=120), signal.SIGKILL)
    killed_at = time.monotonic()
    info = slurm_cluster.wait(job, timeout_s=120)
    elapsed = time.monotonic() - killed_at
    print(f"\njob ended {elapsed:.1f} s after rank 1 was killed at start-up")
    assert info["JobState"] == "FAILED" and elapsed < 60, job_log(run_dir)[-3000:]
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("step_*"))
