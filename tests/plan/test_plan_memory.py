"""The planner's parameter and model-state numbers against the meta model's own counts and the ZeRO formulas."""
from __future__ import annotations

import re

import pytest
import torch

from internvl_train.plan.memory import model_state_bytes
from internvl_train.plan.planner import build_plan
from internvl_train.plan.settings import PlanSettings, split_plan_overrides
from internvl_train.errors import ConfigError
from plan_helpers import compose

GPUS = 4


def _plan(overrides: list[str], gpus: int = GPUS):
    return build_plan(compose(overrides), PlanSettings(gpus=gpus))


def _real_tiny_model(cfg, vocab: int):
    """The tiny model the stage builds, on CPU with real weights, frozen by the engine's rule."""
    from internvl_train.models.internvl_g.modeling import InternVLG

    model = InternVLG(cfg.model, vocab)
    for param in model.stage2_frozen_parameters():
        param.requires_grad_(False)
    return model


@pytest.mark.parametrize("zero_stage, per_rank", [
    (0, lambda p, n: 16 * p),
    (1, lambda p, n: 4 * p + 12 * p / n),
    (2, lambda p, n: 2 * p + 14 * p / n),
    (3, lambda p, n: 16 * p / n),
])
def test_all_trainable_bf16_matches_the_zero_formulas(zero_stage, per_rank):
    plan = _plan(["trainer.precision=bf16", f"deepspeed.zero_stage={zero_stage}"])
    params = sum(p.numel() for p in plan.model.model.parameters())
    assert plan.model.total == params == plan.model.trainable  # stage 1 trains every parameter
    assert plan.state.gpu_total == pytest.approx(per_rank(params, GPUS))


def test_frozen_parameters_hold_only_their_weights():
    """Stage 2 as the paper: the trainable set is exactly InternVL-G's new parts + logit_scale (NEW_IN_G)."""
    from internvl_train.models.internvl_g.modeling import NEW_IN_G

    plan = _plan(["stage=generative", "stage.train_qllama=false", "trainer.precision=bf16",
                  "deepspeed.zero_stage=2"])
    model = plan.model.model
    new = {n for n, _ in model.named_parameters() if n == "logit_scale" or any(re.fullmatch(p, n) for p in NEW_IN_G)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == new
    t = sum(p.numel() for n, p in model.named_parameters() if n in new)
    f = sum(p.numel() for p in model.parameters()) - t
    assert (plan.model.trainable, plan.model.total - plan.model.trainable) == (t, f)
    assert plan.state.params == 2 * (t + f) and plan.state.grads == 2 * t / GPUS
    assert plan.state.optimizer == 12 * t / GPUS


def test_meta_counts_equal_the_real_model():
    plan = _plan(["stage=generative", "stage.train_qllama=false"])
    vocab = plan.model.model.text.config.vocab_size
    real = _real_tiny_model(compose(["stage=generative"]), vocab)
    assert plan.model.total == sum(p.numel() for p in real.parameters())
    assert all(p.device == torch.device("meta") for p in plan.model.model.parameters())


def test_sft_parts_follow_the_stage_freeze_policy():
    plan = _plan(["stage=sft", "stage.freeze_vision=true", "stage.freeze_llm=true"])
    parts = {p.name: p for p in plan.model.parts()}
    assert parts["ViT"].trainable == 0 and parts["LLM"].trainable == 0
    assert parts["bridge (mlp1)"].trainable == parts["bridge (mlp1)"].total > 0


def test_fp32_and_offload():
    fp32 = model_state_bytes(trainable=10, frozen=5, precision="fp32", zero_stage=0, ranks=1)
    assert (fp32.params, fp32.grads, fp32.optimizer) == (60, 40, 80)  # 4 B weights/grads, 8 B Adam moments
    off = model_state_bytes(10, 5, "bf16", zero_stage=3, ranks=5, offload_optimizer=True, offload_param=True)
    assert (off.params, off.optimizer, off.cpu_params, off.cpu_optimizer) == (0, 0, 30 / 5, 120 / 5)
    assert off.grads == 20 / 5


def test_plan_keys_are_checked():
    settings, rest = split_plan_overrides(["plan.gpus=64", "stage=sft", "plan.mfu=0.5"])
    assert (settings.gpus, settings.mfu, rest) == (64, 0.5, ["stage=sft"])
    with pytest.raises(ConfigError, match="did you mean plan.mfu"):
        split_plan_overrides(["plan.mf=0.5"])
    with pytest.raises(ConfigError, match="plan.gpus"):
        split_plan_overrides(["plan.gpus=0"])
