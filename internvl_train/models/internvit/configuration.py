"""Structured config of InternViT, the vision tower of every stage (`model.vision`).

No torch import (Hydra validates configs before any model is built); modeling.py turns it into transformers'
InternVLVisionConfig. validate() raises keys relative to this node (internvl_train/errors.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from internvl_train.errors import ConfigError, check_divisible, check_positive

NORM_TYPES = ("rms_norm", "layer_norm")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass
class VisionTowerConfig:
    """InternViT (built as transformers.InternVLVisionModel). Defaults: InternViT-6B-224px."""

    hidden_size: int = 3200
    num_layers: int = 48
    num_heads: int = 25
    intermediate_size: int = 12800
    image_size: int = 224
    patch_size: int = 14
    norm_type: str = "rms_norm"  # rms_norm (6B) | layer_norm (300M)
    norm_eps: float = 1e-6
    qk_normalization: bool = True  # RMSNorm over the full width of q and k (6B)
    qkv_bias: bool = False
    layer_scale_init: float = 0.1
    drop_path_rate: float = 0.0  # linearly increasing over depth; only while training and not frozen
    attn_implementation: str = "sdpa"  # sdpa | flash_attention_2 | eager
    gradient_checkpointing: bool = False
    pretrained: Optional[str] = None  # local InternViT checkpoint (HF layout or original .pth naming)

    def validate(self) -> None:
        check_positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "image_size",
                       "patch_size", "norm_eps")
        check_divisible("hidden_size", self.hidden_size, self.num_heads, "num_heads")
        if self.image_size % self.patch_size:
            raise ConfigError("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.norm_type not in NORM_TYPES:
            raise ConfigError("norm_type", f"{self.norm_type!r} is not one of {list(NORM_TYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ConfigError("attn_implementation",
                              f"{self.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError("drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image: patches + CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1
