"""Unit tests of the engine's pure parts: schedule, parameter groups, DeepSpeed config, launch env,
freeze policy, checkpoint discovery/pruning, resume identity."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from toy_stage import ToyModel, ToyStage, make_cfg

from internvl_train.engine.checkpoint import CheckpointManager
from internvl_train.engine.distributed import detect_launch_env
from internvl_train.engine.ds_config import build_ds_config
from internvl_train.engine.freeze import freeze_modules
from internvl_train.engine.optim import build_param_groups, lr_multiplier
from internvl_train.engine.run_identity import check_resumable, config_diff, config_hash, identity_config
from internvl_train.engine.schedule import apply_lr, lr_at
from internvl_train.engine.stage_api import DistInfo


def test_schedule_warmup_cosine_and_constant_values() -> None:
    kw = dict(base_lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(13, schedule="cosine", **kw) == pytest.approx(0.1)  # last step reaches the floor
    mid = lr_at(4 + 4.5, schedule="cosine", **kw)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(20, schedule="cosine", **kw) == pytest.approx(0.1)  # past the end: stays at the floor
    assert lr_at(9, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError, match="trainer.schedule"):
        lr_at(0, schedule="linear", **kw)


def test_param_groups_no_decay_for_norms_biases_scalars_query_tokens_and_lr_multipliers() -> None:
    model = ToyModel(dropout=0.0)
    model.body[0].weight.requires_grad_(True)
    groups = build_param_groups(model, 0.05, {"head.": 0.5, "head.weight": 0.25},
                                extra_no_decay=lambda n, p: n == "body.0.weight")
    by_name = {n: g for g in groups for n in g["member_names"]}
    no_decay = {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "query_tokens",
                "logit_scale", "head.bias", "frozen_enc.0.bias"}
    for name, group in by_name.items():
        assert group["weight_decay"] == (0.0 if name in no_decay else 0.05), name
    assert by_name["head.weight"]["lr_mult"] == 0.25  # the longest prefix wins
    assert by_name["head.bias"]["lr_mult"] == 0.5
    assert by_name["query_tokens"]["lr_mult"] == 1.0
    apply_lr(groups, 0.1)
    assert by_name["head.weight"]["lr"] == pytest.approx(0.025)
    assert lr_multiplier("vision.x", {}) == 1.0


def test_frozen_modules_stay_eval_and_leave_param_groups() -> None:
    model = ToyModel(dropout=0.5)
    n = freeze_modules([model.frozen_enc])
    assert n == 2
    model.train()
    assert not model.frozen_enc.training and not model.frozen_enc[1].training and model.body.training
    names = {n for g in build_param_groups(model, 0.1, {}, lambda n, p: False) for n in g["member_names"]}
    assert not any(name.startswith("frozen_enc") for name in names)


def test_ds_config_from_our_groups() -> None:
    cfg = make_cfg("/tmp/x", **{"trainer.grad_accum_steps": 2, "trainer.precision": "bf16",
                                "deepspeed.zero_stage": 3, "deepspeed.offload_param": "cpu",
                                "deepspeed.extra": {"zero_optimization": {"sub_group_size": 7}, "x": 1}})
    ds = build_ds_config(cfg, world_size=4)
    assert ds["train_batch_size"] == 4 * 2 * 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 1.0
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["sub_group_size"] == 7
    assert ds["x"] == 1 and "optimizer" not in ds  # our optimizer, never DeepSpeed's
    fp32_z0 = build_ds_config(make_cfg("/tmp/x"), world_size=1)
    assert fp32_z0["gradient_clipping"] == 0.0  # GuardedAdamW clips there
    with pytest.raises(ValueError, match="offload_param"):
        build_ds_config(make_cfg("/tmp/x", **{"deepspeed.offload_param": "cpu"}), 1)


def test_launch_env_detection() -> None:
    torchrun = detect_launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h1",
                                  "MASTER_PORT": "1234", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.source) == (3, 8, 1, "torchrun")
    step = detect_launch_env({"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
                              "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": ""})
    assert (step.rank, step.world_size, step.local_rank, step.source) == (5, 8, 1, "slurm")
    assert step.master_addr == "127.0.0.1" and step.master_port == 15000 + 4242
    batch_shell = detect_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"})
    assert (batch_shell.world_size, batch_shell.source) == (1, "single")


def test_checkpoint_discovery_ignores_incomplete_and_prunes(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2, rank=0)
    for step in (2, 4, 6):
        d = tmp_path / "checkpoints" / f"step_{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / ".tmp_step_8").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_2\n")
    assert mgr.latest().name == "step_2"  # the pointer wins over the newest directory
    mgr.prune()
    # the newest two plus the one `latest` names survive
    assert [p.name for p in mgr.complete_checkpoints()] == ["step_2", "step_4", "step_6"]
    (tmp_path / "checkpoints" / "latest").write_text("step_6\n")
    mgr.prune()
    assert [p.name for p in mgr.complete_checkpoints()] == ["step_4", "step_6"]
    mgr.clean_incomplete()
    assert not (tmp_path / "checkpoints" / ".tmp_step_8").exists()
    assert mgr.resolve_resume("never") is None and mgr.resolve_resume("auto").name == "step_6"
    with pytest.raises(FileNotFoundError, match="resume="):
        mgr.resolve_resume(str(tmp_path / "nope"))


def test_resume_identity_names_the_changed_keys() -> None:
    a = identity_config(make_cfg("/tmp/a"))
    b = identity_config(make_cfg("/tmp/b", **{"trainer.max_steps": 99, "trainer.lr": 0.5}))
    assert config_diff(a, b) == ["trainer.lr"]  # run_dir and max_steps may change on resume
    saved = {"world_size": 1, "config_hash": config_hash(a), "config": a}
    check_resumable(saved, a, 1, "ck")
    with pytest.raises(RuntimeError, match=r"trainer\.lr"):
        check_resumable(saved, b, 1, "ck")
    with pytest.raises(RuntimeError, match="written by 1 ranks, this job has 2"):
        check_resumable(saved, a, 2, "ck")


def test_toy_stage_contract() -> None:
    cfg = make_cfg("/tmp/x")
    stage = ToyStage(cfg, DistInfo())
    batch = next(iter(stage.build_train_loader()))
    assert stage.batch_size_and_tokens(batch) == (4, 12)
    losses = stage.compute_losses(stage.build_model(), batch)
    assert set(losses) == {"loss", "mse", "abs_err"} and torch.isfinite(losses["loss"])


def test_wandb_mode_auto_is_online_only_with_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from internvl_train.engine.tracking import resolve_wandb_mode

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="logger.mode"):
        resolve_wandb_mode("sometimes")


def test_throughput_and_mfu() -> None:
    from internvl_train.engine.metrics import peak_tflops_per_device, throughput_metrics

    m = throughput_metrics(samples=1000, tokens=0, data_wait_s=1.0, elapsed_s=2.0, world_size=4,
                           flops_per_sample=4e12, peak_tflops=500.0)
    assert m["perf/samples_per_s"] == 500 and m["perf/data_wait_frac"] == pytest.approx(1 / 8)
    assert m["perf/model_tflops_per_device"] == pytest.approx(500.0) and m["perf/mfu"] == pytest.approx(1.0)
    assert "perf/tokens_per_s" not in m
    assert "perf/mfu" not in throughput_metrics(10, 5, 0.0, 1.0, 1, 1e9, 0.0)
    assert peak_tflops_per_device(123.0, "bf16") == 123.0
