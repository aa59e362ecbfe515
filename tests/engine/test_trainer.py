"""The real Trainer on real DeepSpeed (gloo, world of one, in this process): resume exactness,
preemption, the non-finite guard, parameter groups and the freeze policy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_tensors, exported, losses_by_step, metric_rows, optimizer_tensors
from toy_stage import NAN_STEPS_ENV, SIGNAL_STEP_ENV, ToyModel, ToyStage, make_cfg

from internvl_train.errors import ConfigError
from internvl_train.engine.distributed import init_distributed
from internvl_train.engine.guard import NonFiniteLossError
from internvl_train.engine.schedule import lr_at
from internvl_train.engine.signals import EXIT_PREEMPTED
from internvl_train.engine.trainer import Trainer
from internvl_train.engine.stage_api import DistInfo


@pytest.fixture(scope="module")
def dist() -> DistInfo:
    torch.set_num_threads(1)
    return init_distributed(timeout_s=60)


def fit(dist: DistInfo, run_dir: Path, **overrides: Any) -> Trainer:
    cfg = make_cfg(str(run_dir), **overrides)
    trainer = Trainer(cfg, ToyStage(cfg, dist), dist)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("zero", [0, 2])
def test_preempt_then_resume_is_bit_exact(dist: DistInfo, tmp_path: Path, monkeypatch: Any, zero: int) -> None:
    opts = {"deepspeed.zero_stage": zero, "trainer.save_every": 4}
    fit(dist, tmp_path / "full", **opts)
    monkeypatch.setenv(SIGNAL_STEP_ENV, "2")  # SIGUSR1 to ourselves during the 3rd step
    with pytest.raises(SystemExit) as exit_info:
        fit(dist, tmp_path / "split", **opts)
    assert exit_info.value.code == EXIT_PREEMPTED
    ckpts = tmp_path / "split" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_3" and (ckpts / "step_3" / "rank_0.pt").is_file()
    assert max(losses_by_step(tmp_path / "split")) == 3
    monkeypatch.delenv(SIGNAL_STEP_ENV)
    fit(dist, tmp_path / "split", **opts)
    full, split = losses_by_step(tmp_path / "full"), losses_by_step(tmp_path / "split")
    assert list(split) == [1, 2, 3, 4, 5, 6] and split == full  # exact, dropout RNG and data included
    a, b = exported(tmp_path / "full"), exported(tmp_path / "split")
    assert_same_tensors(a, b)
    assert_same_tensors(optimizer_tensors(ckpts / "step_6"), optimizer_tensors(tmp_path / "full/checkpoints/step_6"))


@pytest.mark.parametrize("zero,precision", [(0, "fp32"), (2, "fp32"), (0, "bf16")])
def test_nonfinite_step_changes_neither_weights_nor_optimizer(dist: DistInfo, tmp_path: Path, monkeypatch: Any,
                                                               zero: int, precision: str) -> None:
    # Steps 0 and 1 are warmup, whose lr does not depend on max_steps: a 2-step run is the reference.
    opts = {"deepspeed.zero_stage": zero, "trainer.precision": precision}
    fit(dist, tmp_path / "ref", **opts, **{"trainer.max_steps": 2})
    monkeypatch.setenv(NAN_STEPS_ENV, "2")
    fit(dist, tmp_path / "nan", **opts, **{"trainer.max_steps": 3})
    rows = metric_rows(tmp_path / "nan")
    last = [r for r in rows if r["step"] == 3 and "train/nonfinite_skipped" in r][0]
    assert last["train/nonfinite_skipped"] == 1 and "loss/loss" not in last
    assert_same_tensors(exported(tmp_path / "ref"), exported(tmp_path / "nan"))
    assert_same_tensors(optimizer_tensors(tmp_path / "ref/checkpoints/step_2"),
                        optimizer_tensors(tmp_path / "nan/checkpoints/step_3"))


def test_consecutive_nonfinite_steps_stop_the_run_keeping_the_last_good_checkpoint(
        dist: DistInfo, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv(NAN_STEPS_ENV, "4,5,6")
    opts = {"trainer.max_steps": 8, "trainer.save_every": 2, "trainer.max_nonfinite_steps": 3}
    with pytest.raises(NonFiniteLossError, match="3 consecutive") as err:
        fit(dist, tmp_path, **opts)
    assert "step_6" in str(err.value) and "stopping at step 7" in str(err.value)
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step_6"
    monkeypatch.delenv(NAN_STEPS_ENV)
    fit(dist, tmp_path, **opts)  # resumes from the intact checkpoint and finishes
    assert max(losses_by_step(tmp_path)) == 8 and (tmp_path / "checkpoints/step_8").is_dir()


@pytest.mark.parametrize("zero", [0, 3])
def test_engine_param_groups_lr_and_frozen_modules(dist: DistInfo, tmp_path: Path, zero: int) -> None:
    trainer = fit(dist, tmp_path, **{"deepspeed.zero_stage": zero, "trainer.max_steps": 4})
    groups = {g["name"]: g for g in trainer.engine.optimizer.param_groups}
    assert set(groups) == {"decay_x1", "no_decay_x1", "decay_x0.5", "no_decay_x0.5"}
    assert {n for n in groups["no_decay_x1"]["member_names"]} == {
        "body.0.bias", "body.1.weight", "body.1.bias", "query_tokens", "logit_scale"}
    assert groups["decay_x0.5"]["member_names"] == ["head.weight"] and groups["decay_x0.5"]["weight_decay"] == 0.05
    assert groups["no_decay_x1"]["weight_decay"] == 0.0
    last_lr = lr_at(3, base_lr=1e-2, warmup_steps=2, max_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert groups["decay_x1"]["lr"] == pytest.approx(last_lr) and groups["no_decay_x0.5"]["lr"] == pytest.approx(last_lr / 2)
    module = trainer.engine.module
    assert module.training and not module.frozen_enc.training and not module.frozen_enc[1].training
    torch.manual_seed(0)
    initial = ToyModel(0.1).state_dict()
    final = exported(tmp_path)
    assert final["logit_scale"].dim() == 0 and final["query_tokens"].shape == (1, 2, 16)
    for key in ("frozen_enc.0.weight", "frozen_enc.0.bias"):
        assert torch.equal(final[key], initial[key])
    assert not torch.equal(final["body.0.weight"], initial["body.0.weight"])
    rows = metric_rows(tmp_path)
    assert rows[-2]["train/lr"] == pytest.approx(last_lr) and rows[-2]["perf/model_tflops_per_device"] > 0


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_gradient_accumulation_matches_one_big_batch(dist: DistInfo, tmp_path: Path, zero: int) -> None:
    """The Stage contract calls engine.module directly; under ZeRO-3 that needs the engine's forward
    bookkeeping (GuardedEngine) or accumulation keeps only the last micro-batch."""
    common = {"deepspeed.zero_stage": zero, "trainer.max_steps": 3, "stage.dropout": 0.0, "trainer.save_every": 0}
    fit(dist, tmp_path / "big", **common, **{"trainer.micro_batch_size": 8})
    fit(dist, tmp_path / "accum", **common, **{"trainer.micro_batch_size": 4, "trainer.grad_accum_steps": 2})
    big, accum = metric_rows(tmp_path / "big"), metric_rows(tmp_path / "accum")
    for a, b in zip(big, accum):
        for key in ("loss/loss", "train/grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)


def test_evaluate_only_uses_the_latest_checkpoint(dist: DistInfo, tmp_path: Path) -> None:
    fit(dist, tmp_path, **{"trainer.max_steps": 3, "trainer.save_every": 0})
    trained = json_lines(tmp_path / "results.jsonl")[-1]
    cfg = make_cfg(str(tmp_path), **{"mode": "eval"})
    results = Trainer(cfg, ToyStage(cfg, dist), dist).evaluate()
    assert results["val_mse"] == pytest.approx(trained["val_mse"], rel=1e-6)
    assert json_lines(tmp_path / "results.jsonl")[-1] == {"step": 3, **results}
    fresh_cfg = make_cfg(str(tmp_path), **{"mode": "eval", "resume": "never"})
    with pytest.raises(ConfigError, match="nothing trained to evaluate"):  # not a random model's numbers
        Trainer(fresh_cfg, ToyStage(fresh_cfg, dist), dist).evaluate()


def json_lines(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]
