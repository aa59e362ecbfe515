"""Work-arounds for DeepSpeed defects the engine hits, each isolated and idempotent.

Scalar parameters: DeepSpeedEngine._broadcast_model (ZeRO 0-2) and zero.Init._zero_init_param (ZeRO-3)
do `p.data.view(torch.uint8)`, which raises for 0-dim tensors ("self.dim() cannot be 0 to view Float as
Byte"). CLIP-style models carry a 0-dim `logit_scale`, so every stage-1/2 run would fail at startup.
During the broadcast the scalars get a 1-element view of the same storage and their 0-dim shape back
right after (under ZeRO-3 through `ds_shape`, which every later gather uses).
"""
from __future__ import annotations

import functools
from typing import Any


def install_deepspeed_compat() -> None:
    patch_engine_broadcast()
    patch_zero3_init_broadcast()


def patch_zero3_init_broadcast() -> None:
    import torch
    from deepspeed.runtime.zero.partition_parameters import Init

    original = Init._zero_init_param
    if getattr(original, "_scalar_safe", False):
        return

    @functools.wraps(original)
    def zero_init_param_scalar_safe(self: Any, param: Any) -> None:
        if param.dim() != 0:
            return original(self, param)
        param.data = param.data.reshape(1)
        original(self, param)
        param.ds_shape = torch.Size([])

    zero_init_param_scalar_safe._scalar_safe = True  # type: ignore[attr-defined]
    Init._zero_init_param = zero_init_param_scalar_safe


def patch_engine_broadcast() -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._broadcast_model
    if getattr(original, "_scalar_safe", False):
        return

    @functools.wraps(original)
    def broadcast_model_scalar_safe(self: Any) -> None:
        scalars = [p for p in self.module.parameters() if p.dim() == 0]
        for p in scalars:
            p.data = p.data.reshape(1)
        try:
            original(self)
        finally:
            for p in scalars:
                p.data = p.data.reshape(())

    broadcast_model_scalar_safe._scalar_safe = True  # type: ignore[attr-defined]
    DeepSpeedEngine._broadcast_model = broadcast_model_scalar_safe
