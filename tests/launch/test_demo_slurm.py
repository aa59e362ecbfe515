"""The real trainer on the real (local) SLURM cluster: demo stage 1 with 2 CPU tasks, preempted mid-run with
SIGUSR1, requeued and resumed, must end exactly where an uninterrupted run ends."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from launch_helpers import PIPELINE_SH, REPO, TRAIN_SBATCH, SlurmCluster, wait_for_lines

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

MAX_STEPS = 8
DEMO_STAGE1 = ["stage=contrastive", f"trainer.max_steps={MAX_STEPS}", "trainer.log_every=1",
               "trainer.save_every=100", "trainer.micro_batch_size=4", "trainer.progress_bar=off"]


@pytest.fixture(autouse=True)
def trainer_importable() -> None:
    try:
        importlib.import_module("internvl_train.engine.trainer")
    except ImportError as err:
        pytest.skip(f"the real trainer is not importable yet (internvl_train.engine.trainer: {err})")


def submit_demo(cluster: SlurmCluster, run_dir: Path, overrides: list[str]) -> str:
    out = cluster.run("sbatch", "--parsable", "--ntasks-per-node=2", f"--output={run_dir}.out", TRAIN_SBATCH,
                      *overrides, f"run_dir={run_dir}", extra_env={"PYTHON": sys.executable}, cwd=REPO).stdout
    return out.strip().split(";")[0]


def metrics_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """Training rows of metrics.jsonl (evaluation rows share the final step) by step."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if any(k.startswith("loss/") for k in r)]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss/") or k == "train/samples_seen"}
            for r in rows}


def final_checkpoint(run_dir: Path) -> Path:
    root = run_dir / "checkpoints"
    return root / (root / "latest").read_text().strip()


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    import torch

    assert a.keys() == b.keys(), what
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m: f"{what} {key}: {m}")


def test_preempted_demo_stage1_resumes_to_the_uninterrupted_result(slurm_cluster: SlurmCluster, tmp_path: Path):
    import torch

    reference, preempted = tmp_path / "reference", tmp_path / "preempted"
    ref_job = submit_demo(slurm_cluster, reference, DEMO_STAGE1)
    assert slurm_cluster.wait(ref_job, timeout_s=900)["JobState"] == "COMPLETED", Path(f"{reference}.out").read_text()

    job = submit_demo(slurm_cluster, preempted, DEMO_STAGE1)
    wait_for_lines(preempted / "metrics.jsonl", 3, timeout_s=600)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
    info = slurm_cluster.wait(job, timeout_s=900)
    log = Path(f"{preempted}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log

    ref_metrics, pre_metrics = metrics_by_step(reference), metrics_by_step(preempted)
    assert list(pre_metrics) == list(range(1, MAX_STEPS + 1)), "steps repeated or skipped across the requeue"
    assert pre_metrics == ref_metrics  # every step's losses and samples seen, bit for bit
    assert (preempted / "results.jsonl").read_text() == (reference / "results.jsonl").read_text()
    ref_ckpt, pre_ckpt = final_checkpoint(reference), final_checkpoint(preempted)
    assert ref_ckpt.name == pre_ckpt.name == f"step_{MAX_STEPS}"
    for rank in (0, 1):  # data position of each rank's stream
        ref_rank = torch.load(ref_ckpt / f"rank_{rank}.pt", weights_only=False)["loader"]
        assert ref_rank == torch.load(pre_ckpt / f"rank_{rank}.pt", weights_only=False)["loader"]
    [ref_states] = sorted(ref_ckpt.glob("engine/**/*model_states.pt"))
    [pre_states] = sorted(pre_ckpt.glob("engine/**/*model_states.pt"))
    assert_same_tensors(torch.load(ref_states, weights_only=False)["module"],
                        torch.load(pre_states, weights_only=False)["module"], "final weights")
    run_id = json.loads((pre_ckpt / "trainer_state.json").read_text())["wandb_run_id"]
    starts = sorted((preempted / "wandb").glob("*run-*"))  # W&B (offline here) files of each start
    assert len(starts) == 2 and all(d.name.endswith(f"-{run_id}") for d in starts), starts


def export_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "export").glob("*.safetensors"))
    assert files, f"{run_dir}/export holds no safetensors file"
    return {k: v for f in files for k, v in load_file(f).items()}


def with_prefix(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def test_pipeline_runs_the_three_demo_stages(slurm_cluster: SlurmCluster, tmp_path: Path):
    # stage.train_qllama=false (the paper's stage 2): every inherited tensor but logit_scale is frozen, so
    # each must leave stage 2 bit-equal to stage 1's export.
    out = slurm_cluster.run("bash", PIPELINE_SH, "--runs-root", tmp_path, "--ntasks-per-node", "1",
                            "--stage2", "stage.train_qllama=false", "--stage3", "model=chat_tiny data=demo_sft",
                            "--", "trainer.max_steps=2", "trainer.micro_batch_size=4", "logger=none",
                            "trainer.progress_bar=off", extra_env={"PYTHON": sys.executable}, cwd=REPO).stdout
    rows = [line.split() for line in out.splitlines()]
    assert [name for name, _, _ in rows] == ["contrastive", "generative", "sft"], out
    for name, job, run_dir in rows:
        info = slurm_cluster.wait(job, timeout_s=900)
        assert info["JobState"] == "COMPLETED", (tmp_path / "logs" / f"ivl-{name}-{job}.out").read_text()
        assert any((Path(run_dir) / "export").iterdir()), f"{name} exported nothing"
    stage1, stage2, stage3 = (export_tensors(Path(run_dir)) for _, _, run_dir in rows)

    # Stage 1 trained every tower (no norm gain still at its init 1): equality below cannot come from a
    # shared seed, only from loading stage 1's export.
    assert not any(bool((v == 1).all()) for k, v in stage1.items() if "norm" in k and k.endswith("weight"))
    inherited = {k: v for k, v in stage1.items() if k != "logit_scale"}
    assert inherited.keys() <= stage2.keys(), sorted(inherited.keys() - stage2.keys())
    assert_same_tensors(inherited, {k: stage2[k] for k in inherited}, "stage 2 export vs stage 1 export:")

    # Stage 3 keeps its ViT frozen (stage.freeze_vision defaults to true): its export holds stage 2's ViT.
    assert OmegaConf.load(Path(rows[2][2]) / "config.yaml").stage.freeze_vision is True
    vit2, vit3 = with_prefix(stage2, "vision."), with_prefix(stage3, "model.vision_tower.")
    assert vit2, "stage 2 exported no vision tower"
    assert_same_tensors(vit2, vit3, "stage 3 ViT vs stage 2 export:")
