"""train.sbatch's requeue budget and its interpreter check, on the real SLURM cluster with the stand-in."""
from __future__ import annotations

from pathlib import Path

import pytest

from launch_helpers import TRAIN_SBATCH, SlurmCluster, standin_env

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def submit(cluster: SlurmCluster, workdir: Path, *args: str, env: dict[str, str]) -> str:
    out = cluster.run("sbatch", "--parsable", TRAIN_SBATCH, *args, extra_env={**standin_env(), **env},
                      cwd=workdir).stdout
    return out.strip().split(";")[0]


def checkpoint_steps_at_each_start(run_dir: Path) -> list[int]:
    lines = (run_dir / "logs" / "launch.log").read_text().splitlines()
    return [int(word.split("=")[1]) for line in lines for word in line.split() if word.startswith("checkpoint_step=")]


def test_max_restarts_counts_only_restarts_without_progress(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Starts: no progress, 2 steps, no progress, no progress. MAX_RESTARTS=1 allows one restart after a start
    without progress; the start that made progress resets the count, so the job is requeued 3 times and
    stops after the second start in a row without progress."""
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, "steps=50", "step_s=0.05", "preempt_plan=0,2,0,0", f"run_dir={run_dir}",
                 env={"MAX_RESTARTS": "1"})
    info = slurm_cluster.wait(job, timeout_s=180)
    log = (tmp_path / f"internvl-train-{job}.out").read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "3", log
    assert checkpoint_steps_at_each_start(run_dir) == [0, 0, 2, 2]
    assert "2 starts in a row ended without a checkpoint newer than step 2 (MAX_RESTARTS=1); not requeueing" in log
    assert info["ExitCode"] == "75:0"


@pytest.mark.parametrize("python, message", [
    ("/usr/bin/python3", "cannot run the trainer: ModuleNotFoundError: No module named"),
    ("/nonexistent/bin/python", "PYTHON=/nonexistent/bin/python: no such interpreter"),
])
def test_an_interpreter_that_cannot_run_the_trainer_fails_in_one_line(slurm_cluster: SlurmCluster, tmp_path: Path,
                                                                      python: str, message: str):
    if python == "/usr/bin/python3" and not Path(python).exists():
        pytest.skip("no system python3 to stand for a shell without the venv")
    job = submit(slurm_cluster, tmp_path, "trainer.max_steps=1", env={"PYTHON": python, "TRAIN_ENTRY": "-m internvl_train"})
    info = slurm_cluster.wait(job, timeout_s=60)
    log = (tmp_path / f"internvl-train-{job}.out").read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", log
    [line] = [line for line in log.splitlines() if "ERROR" in line]
    assert message in line and "PYTHON=/path/to/.venv/bin/python" in line, line
    assert "training step exited" not in log  # nothing was started
