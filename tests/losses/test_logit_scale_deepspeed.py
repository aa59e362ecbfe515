"""clamp_logit_scale_ reaches DeepSpeed's fp32 master copy (bf16 ZeRO-1, real engine, 1 gloo rank)."""
from __future__ import annotations

import math

import pytest
import torch

from internvl_train.losses.itc import MAX_LOGIT_SCALE, clamp_logit_scale_

from tiny_towers import run_on_ranks

pytestmark = pytest.mark.slow


class ScaleOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.log_scale = torch.nn.Parameter(torch.tensor([4.0]))  # shape [1]: DeepSpeed bf16 rejects 0-dim params


def _worker(rank: int, world: int) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    model = ScaleOnly()
    config = {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    scale = engine.module.log_scale
    for _ in range(3):  # Adam pushes the scale up by ~lr per step: 4.5, 5.0, 5.5 without the clamp
        engine.backward(-scale.float().sum() + 0 * engine.module.lin.weight.sum())
        engine.step()
        clamp_logit_scale_(scale)
    master = safe_get_full_fp32_param(scale)
    assert master.item() == pytest.approx(MAX_LOGIT_SCALE, abs=1e-6)
    assert scale.item() == pytest.approx(MAX_LOGIT_SCALE, abs=0.02)  # bf16 copy
    assert scale.item() < math.log(100.0) + 0.02


def test_clamp_reaches_deepspeed_master_weights() -> None:
    run_on_ranks(_worker, 1)
