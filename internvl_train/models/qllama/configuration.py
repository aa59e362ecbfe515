"""Structured config of QLLaMA's stage-2 additions to the text tower (`model.qllama`).

No torch import (Hydra validates configs before any model is built). validate() raises keys relative to this
node (internvl_train/errors.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from internvl_train.errors import ConfigError, check_positive


@dataclass
class QLLaMAConfig:
    """Stage-2 additions to the text tower: learnable queries and cross-attention into the ViT tokens."""

    num_query_tokens: int = 96
    cross_attention_every: int = 2  # layer idx % every == 0 gets cross-attention (16 of 32 for LLaMA-7B)
    vision_width: Optional[int] = None  # None = vision.hidden_size
    query_init_std: float = 0.02

    def validate(self) -> None:
        check_positive(self, "num_query_tokens", "cross_attention_every", "query_init_std")
        if self.vision_width is not None and self.vision_width <= 0:
            raise ConfigError("vision_width", f"must be > 0 or null (= vision.hidden_size), got {self.vision_width}")
