"""launch/local.sh and the argument handling of the launch scripts (no SLURM needed)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from launch_helpers import CLUSTER_SH, LOCAL_SH, PIPELINE_SH, standin_env, wait_for_lines


def run_local(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOCAL_SH), *args], env={**os.environ, **standin_env()}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_local_pipeline_chains_stage_exports(tmp_path: Path):
    done = run_local(tmp_path, "--runs-root", "r", "--stage2", "steps=1", "--", "steps=2", "step_s=0")
    assert done.returncode == 0, done.stderr
    export = json.loads((tmp_path / "r" / "sft" / "export" / "model.json").read_text())
    assert export["chain"] == ["r/contrastive/export", "r/generative/export"]
    assert json.loads((tmp_path / "r" / "generative" / "result.rank0.json").read_text())["step"] == 1


def test_local_single_stage_from_given_init(tmp_path: Path):
    assert run_local(tmp_path, "--runs-root", "a", "--stages", "1", "--", "steps=1", "step_s=0").returncode == 0
    done = run_local(tmp_path, "--runs-root", "b", "--stages", "3", "--init-from", "a/contrastive/export",
                     "--", "steps=1", "step_s=0")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "b" / "contrastive").exists()
    assert json.loads((tmp_path / "b" / "sft" / "export" / "model.json").read_text())["chain"] == [
        "a/contrastive/export"]


def test_local_stops_at_a_failing_stage(tmp_path: Path):
    done = run_local(tmp_path, "--runs-root", "r", "--stage1", "steps=x")
    assert done.returncode == 1 and "stage contrastive failed with exit code 1" in done.stderr
    assert not (tmp_path / "r" / "generative").exists()


@pytest.mark.parametrize("script, args, message", [
    (LOCAL_SH, ["--nproc", "0"], "--nproc must be a positive integer"),
    (LOCAL_SH, ["--stages", "1,4"], "--stages must list stage numbers"),
    (LOCAL_SH, ["stage=sft"], "Hydra overrides go after --"),
    (PIPELINE_SH, ["--dry-run", "--stages", "0"], "--stages must list stage numbers"),
    (PIPELINE_SH, ["--bogus"], "unknown option '--bogus'"),
])
def test_bad_arguments_are_named(tmp_path: Path, script: Path, args: list[str], message: str):
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_cluster_script_requires_a_command_and_state_dir():
    done = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True)
    assert done.returncode == 2 and "start  <state_dir>" in done.stderr


def test_pipeline_dry_run_wires_dependencies_and_exports(tmp_path: Path):
    done = subprocess.run(["bash", str(PIPELINE_SH), "--dry-run", "--runs-root", "p", "--stages", "2,3",
                           "--init-from", "/ckpt/c", "--nodes", "2", "--", "trainer.max_steps=5"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    commands = [line for line in done.stdout.splitlines() if line.startswith("sbatch")]
    assert len(commands) == 2 and all("--nodes=2" in c for c in commands)
    assert "init_from=/ckpt/c" in commands[0] and "stage=generative" in commands[0]
    assert "--dependency=afterok:DRYRUN2" in commands[1]
    assert f"init_from={tmp_path}/p/generative/export" in commands[1] and "trainer.max_steps=5" in commands[1]


@pytest.mark.slow
def test_local_torchrun_usr1_checkpoints_and_rerun_resumes(tmp_path: Path):
    args = ["bash", str(LOCAL_SH), "--nproc", "2", "--runs-root", "r", "--stages", "1", "--",
            "steps=100", "step_s=0.05"]
    env = {**os.environ, **standin_env()}
    first = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    wait_for_lines(tmp_path / "r" / "contrastive" / "steps.rank1.txt", 3)
    first.send_signal(signal.SIGUSR1)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 75, output
    assert "run the same command again to resume" in output

    second = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    for rank in (0, 1):
        result = json.loads((tmp_path / "r" / "contrastive" / f"result.rank{rank}.json").read_text())
        assert 3 <= result["resumed_from"] < 100
        steps = (tmp_path / "r" / "contrastive" / f"steps.rank{rank}.txt").read_text().split()
        assert [int(s) for s in steps] == list(range(1, 101))
