"""launch/slurm/* on a real single-node SLURM cluster, driving the stand-in trainer (standin_trainer.py)."""
from __future__ import annotations

import json
import re
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from launch_helpers import (CLUSTER_SH, PIPELINE_SH, TRAIN_SBATCH, SlurmCluster, standin_env,
                            wait_for_lines)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def submit(cluster: SlurmCluster, workdir: Path, *args: str, sbatch_args: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> str:
    out = cluster.run("sbatch", "--parsable", *sbatch_args, TRAIN_SBATCH, *args,
                      extra_env={**standin_env(), **(env or {})}, cwd=workdir).stdout
    return out.strip().split(";")[0]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def launch_times(run_dir: Path) -> list[datetime]:
    lines = (run_dir / "logs" / "launch.log").read_text().splitlines()
    return [datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%SZ") for line in lines]


def test_cluster_start_reuses_the_running_cluster(slurm_cluster: SlurmCluster):
    def pids() -> dict[str, str]:
        return {n: (slurm_cluster.state_dir / "run" / f"{n}.pid.started").read_text()
                for n in ("munged", "slurmctld", "slurmd")}

    before = pids()
    again = slurm_cluster.run("bash", CLUSTER_SH, "start", slurm_cluster.state_dir)
    assert "reusing the running cluster" in again.stderr and pids() == before
    status = slurm_cluster.run("bash", CLUSTER_SH, "status", slurm_cluster.state_dir)
    assert "slurmd: running" in status.stdout and re.search(r"\b(idle|mixed|allocated)\b", status.stdout)


def test_two_task_job_gets_slurm_ranks_and_a_working_master(slurm_cluster: SlurmCluster, tmp_path: Path):
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, "steps=3", "step_s=0.05", "dist=gloo", f"run_dir={run_dir}",
                 sbatch_args=("--ntasks-per-node=2",))
    info = slurm_cluster.wait(job)
    assert info["JobState"] == "COMPLETED", (tmp_path / f"internvl-train-{job}.out").read_text()

    reports = [read_json(run_dir / f"env.rank{r}.0.json") for r in (0, 1)]
    assert [r["ranks"]["rank"] for r in reports] == [0, 1]
    for r in reports:
        assert r["ranks"]["source"] == "slurm" and r["ranks"]["world_size"] == 2
        assert r["ranks"]["all_reduce"] == 3  # a real gloo rendezvous on MASTER_ADDR:MASTER_PORT
        assert r["env"]["MASTER_PORT"] == str(15000 + int(job) % 20000)
        socket.gethostbyname(r["env"]["MASTER_ADDR"])  # resolvable (or the 127.0.0.1 fallback)
    assert (run_dir / "logs" / f"slurm-{job}.out").resolve() == tmp_path / f"internvl-train-{job}.out"
    assert len(launch_times(run_dir)) == 1


def test_default_run_dir_is_job_name_and_id(slurm_cluster: SlurmCluster, tmp_path: Path):
    job = submit(slurm_cluster, tmp_path, "steps=1", "step_s=0", sbatch_args=("--job-name=demo",))
    assert slurm_cluster.wait(job)["JobState"] == "COMPLETED"
    assert (tmp_path / "runs" / f"demo-{job}" / "result.rank0.json").exists()


@pytest.mark.parametrize("launcher", ["srun", "torchrun"])
def test_usr1_saves_requeues_and_resumes(slurm_cluster: SlurmCluster, tmp_path: Path, launcher: str):
    steps, run_dir = 60, tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, f"steps={steps}", "step_s=0.1", f"run_dir={run_dir}",
                 sbatch_args=("--ntasks-per-node=2",), env={"LAUNCHER": launcher})
    wait_for_lines(run_dir / "steps.rank1.txt", 3)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
    info = slurm_cluster.wait(job, timeout_s=150)
    log = (tmp_path / f"internvl-train-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert "requeueing job" in log

    for rank in (0, 1):
        result = read_json(run_dir / f"result.rank{rank}.json")
        assert 3 <= result["resumed_from"] < steps  # the restart began from the saved step, not from 0
        assert result["total"] == (rank + 1) * steps * (steps + 1) // 2
        executed = [int(s) for s in (run_dir / f"steps.rank{rank}.txt").read_text().split()]
        assert executed == list(range(1, steps + 1))  # no step repeated or skipped across the restart
        restarted = read_json(run_dir / f"env.rank{rank}.1.json")["env"]
        assert restarted["SLURM_RESTART_COUNT"] == "1"
    requeued_at = datetime.strptime(re.search(r"\[train.sbatch (\S+) .*requeueing job", log)[1],
                                    "%Y-%m-%dT%H:%M:%SZ")
    latency = (launch_times(run_dir)[1] - requeued_at).total_seconds()
    print(f"\n[{launcher}] requeue latency: 'scontrol requeue' -> restarted batch script {latency:.0f} s")
    assert latency < 60, "cluster.sh's cred_expire/sched_interval settings should restart within ~15 s"


def test_scancel_saves_a_checkpoint_and_does_not_requeue(slurm_cluster: SlurmCluster, tmp_path: Path):
    run_dir = tmp_path / "run"
    job = submit(slurm_cluster, tmp_path, "steps=200", "step_s=0.1", f"run_dir={run_dir}")
    wait_for_lines(run_dir / "steps.rank0.txt", 3)
    slurm_cluster.run("scancel", job)  # SIGTERM to the tasks and the batch shell, SIGKILL after KillWait
    info = slurm_cluster.wait(job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0"
    saved = read_json(run_dir / "checkpoint.rank0.json")["step"]
    assert saved >= 3 and saved == len((run_dir / "steps.rank0.txt").read_text().split())
    assert "not requeueing here" in (tmp_path / f"internvl-train-{job}.out").read_text()


def test_pipeline_runs_three_dependent_stages_in_order(slurm_cluster: SlurmCluster, tmp_path: Path):
    """Stage 1 is preempted and requeued once on the way: the chain must wait for its restart."""
    root = tmp_path / "pipe"
    out = slurm_cluster.run("bash", PIPELINE_SH, "--runs-root", root, "--ntasks-per-node", "1",
                            "--stage1", "steps=40", "--stage3", "steps=4", "--", "steps=2", "step_s=0.05",
                            extra_env=standin_env(), cwd=tmp_path).stdout
    rows = [line.split() for line in out.splitlines()]
    assert [r[0] for r in rows] == ["contrastive", "generative", "sft"]
    assert [r[2] for r in rows] == [str(root / n) for n in ("contrastive", "generative", "sft")]
    wait_for_lines(root / "contrastive" / "steps.rank0.txt", 3)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", rows[0][1])
    infos = [slurm_cluster.wait(job_id) for _, job_id, _ in rows]
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 3
    assert [i["Restarts"] for i in infos] == ["1", "0", "0"]
    for earlier, later in zip(infos, infos[1:]):
        assert later["StartTime"] >= earlier["EndTime"]

    export = read_json(root / "sft" / "export" / "model.json")
    assert export["stage"] == "sft"
    assert export["chain"] == [str(root / "contrastive" / "export"), str(root / "generative" / "export")]
    assert read_json(root / "sft" / "result.rank0.json")["step"] == 4  # per-stage override wins
    assert (root / "logs" / f"ivl-sft-{rows[2][1]}.out").exists()


def test_pipeline_cancels_later_stages_when_one_fails(slurm_cluster: SlurmCluster, tmp_path: Path):
    root = tmp_path / "pipe"
    out = slurm_cluster.run("bash", PIPELINE_SH, "--runs-root", root, "--ntasks-per-node", "1",
                            "--stage1", "steps=not-a-number", extra_env=standin_env(), cwd=tmp_path).stdout
    jobs = [line.split()[1] for line in out.splitlines()]
    assert slurm_cluster.wait(jobs[0])["JobState"] == "FAILED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [slurm_cluster.job(j)["JobState"] for j in jobs[1:]]
        if states == ["CANCELLED", "CANCELLED"]:
            return
        time.sleep(0.25)
    raise AssertionError(f"later stages not cancelled after stage 1 failed: {states}")
