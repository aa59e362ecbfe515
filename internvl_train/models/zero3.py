"""Construct transformers modules so that they also work inside DeepSpeed ZeRO-3's zero.Init.

Under zero.Init parameters are partitioned into empty shards as each module finishes __init__, so the
weight init that transformers runs in post_init would index empty tensors. transformers' own answer (used by
its from_pretrained/_from_config) is: build with init disabled, then run `initialize_weights_zero3`, which
gathers each module's parameters before initialising them. It keys off transformers' ZeRO-3 switch
(`HfDeepSpeedConfig` alive), which the engine sets when it builds a model under ZeRO-3; otherwise this is a
plain constructor call.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from transformers.integrations import is_deepspeed_zero3_enabled

M = TypeVar("M")


def construct_hf(build: Callable[[], M]) -> M:
    if not is_deepspeed_zero3_enabled():
        return build()
    from transformers.initialization import no_init_weights
    from transformers.integrations.deepspeed import initialize_weights_zero3

    with no_init_weights():
        model = build()
    initialize_weights_zero3(model)
    return model
