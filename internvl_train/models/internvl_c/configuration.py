"""Structured config of the LLaMA text tower of InternVL-C (`model.text`).

No torch import (Hydra validates configs before any model is built); text_tower.py turns it into transformers'
LlamaConfig. validate() raises keys relative to this node (internvl_train/errors.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from internvl_train.errors import ConfigError, check_divisible, check_positive
from internvl_train.models.internvit.configuration import ATTN_IMPLEMENTATIONS


@dataclass
class TextTowerConfig:
    """LLaMA text tower (transformers LlamaForCausalLM). Defaults: the multilingual LLaMA-7B of InternVL."""

    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None  # None = num_heads
    intermediate_size: int = 11008
    vocab_size: Optional[int] = None  # None = taken from the tokenizer at build time
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    pad_token_id: int = 0  # the official InternVL-C tokenisation pads with id 0
    attn_implementation: str = "sdpa"  # QLLaMA's stage-2 masks need sdpa or eager
    gradient_checkpointing: bool = False
    pretrained: Optional[str] = None  # local HF LLaMA directory (safetensors or .bin shards)
    tokenizer: Optional[str] = None  # local tokenizer directory (defaults to `pretrained`)

    def validate(self) -> None:
        check_positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "max_position_embeddings", "rms_norm_eps")
        check_divisible("hidden_size", self.hidden_size, self.num_heads, "num_heads")
        if self.num_heads % self.kv_heads:
            raise ConfigError("num_kv_heads", f"num_heads={self.num_heads} is not a multiple of {self.kv_heads}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ConfigError("vocab_size", f"must be > 0 or null (from the tokenizer), got {self.vocab_size}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError("attn_implementation",
                              f"{self.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads
