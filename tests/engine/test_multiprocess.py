"""Multi-process and crash tests: loss parity of ZeRO-2/3 over 2 gloo ranks with one process, and a
SIGKILL in the middle of a checkpoint write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_same_tensors, exported, grad_norms_by_step, losses_by_step

from internvl_train.engine.checkpoint import PAUSE_ENV
from internvl_train.engine.distributed import find_free_port

RUN_TOY = str(Path(__file__).with_name("run_toy.py"))
# fp32 on CPU; the only difference between the runs is the order of the gradient reductions.
LOSS_RTOL, GRAD_NORM_RTOL, WEIGHT_ATOL = 1e-5, 1e-5, 1e-5


def toy_command(run_dir: Path, nproc: int, **overrides: object) -> list[str]:
    args = [f"{k}={v}" for k, v in overrides.items()]
    if nproc == 1:
        return [sys.executable, RUN_TOY, str(run_dir), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(find_free_port()), RUN_TOY, str(run_dir), *args]


def run_toy(run_dir: Path, nproc: int = 1, env: dict[str, str] | None = None, **overrides: object) -> None:
    proc = subprocess.run(toy_command(run_dir, nproc, **overrides), env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_zero2_and_zero3_on_two_ranks_match_one_process(tmp_path: Path) -> None:
    common = {"trainer.max_steps": 5, "trainer.save_every": 0, "stage.dropout": 0.0}
    run_toy(tmp_path / "one", 1, **common, **{"trainer.micro_batch_size": 4, "trainer.grad_accum_steps": 2})
    run_toy(tmp_path / "z2", 2, **common, **{"deepspeed.zero_stage": 2, "trainer.micro_batch_size": 4})
    run_toy(tmp_path / "z3", 2, **common, **{"deepspeed.zero_stage": 3, "trainer.micro_batch_size": 2,
                                            "trainer.grad_accum_steps": 2})
    reference, ref_norms = losses_by_step(tmp_path / "one"), grad_norms_by_step(tmp_path / "one")
    assert list(reference) == list(ref_norms) == [1, 2, 3, 4, 5]
    for name in ("z2", "z3"):
        losses, norms = losses_by_step(tmp_path / name), grad_norms_by_step(tmp_path / name)
        assert losses.keys() == reference.keys() and norms.keys() == ref_norms.keys()
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=LOSS_RTOL), (name, step)
        # Gradients summed instead of averaged over ranks leave losses and weights unchanged (clipping
        # and Adam are blind to the gradient's scale); the pre-clip norm is not.
        for step, norm in ref_norms.items():
            assert norms[step] == pytest.approx(norm, rel=GRAD_NORM_RTOL), (name, step, "grad norm")
        weights, ref_weights = exported(tmp_path / name), exported(tmp_path / "one")
        for key, value in ref_weights.items():
            torch.testing.assert_close(weights[key], value, atol=WEIGHT_ATOL, rtol=0)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    opts = {"trainer.max_steps": 6, "trainer.save_every": 2}
    run_toy(tmp_path / "reference", **opts)
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(toy_command(crashed, 1, **opts), env={**os.environ, PAUSE_ENV: "4"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (crashed / "save_paused").exists():
        assert proc.poll() is None and time.time() < deadline, "the run never reached the save of step 4"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = crashed / "checkpoints"
    assert (ckpts / ".tmp_step_4" / "trainer_state.json").is_file()  # written, never published
    assert not (ckpts / "step_4").exists() and (ckpts / "latest").read_text().strip() == "step_2"
    run_toy(crashed, **opts)  # resume=auto picks step_2
    assert not (ckpts / ".tmp_step_4").exists()
    assert losses_by_step(crashed) == losses_by_step(tmp_path / "reference")
    assert_same_tensors(exported(crashed), exported(tmp_path / "reference"))


@pytest.mark.slow
def test_signal_on_one_rank_checkpoints_all_ranks_and_exits_75(tmp_path: Path) -> None:
    opts = {"deepspeed.zero_stage": 2, "trainer.max_steps": 5, "trainer.save_every": 0}
    env = {**os.environ, "TOY_SIGNAL_STEP": "1"}  # rank 0 signals itself during the 2nd step
    procs = [subprocess.Popen(toy_command(tmp_path, 1, **opts), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**env, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for port in [str(find_free_port())] for r in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], outputs[1][-2000:]
    step_dir = tmp_path / "checkpoints" / "step_2"
    assert (step_dir / "rank_0.pt").is_file() and (step_dir / "rank_1.pt").is_file()
    run_toy(tmp_path, 2, **opts)
    assert list(losses_by_step(tmp_path)) == [1, 2, 3, 4, 5]
