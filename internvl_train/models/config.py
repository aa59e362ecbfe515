"""Structured config of a model preset: the composition of the per-model configurations (InternViT in
internvit/configuration.py, the LLaMA text tower in internvl_c/configuration.py, QLLaMA in
qllama/configuration.py, the chat model in chat/configuration.py) plus the CLIP heads' fields.

No torch import (Hydra validates configs before any model is built). Registered as `schema/model`; every
configs/model/*.yaml starts with `defaults: [/schema/model@_here_, _self_]`. Each validate() checks only its own
node with keys relative to it; internvl_train.config walks the tree and qualifies the keys.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from internvl_train.errors import ConfigError, check_divisible, check_positive, qualified
from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.models.internvit.configuration import VisionTowerConfig
from internvl_train.models.internvl_c.configuration import TextTowerConfig
from internvl_train.models.qllama.configuration import QLLaMAConfig


@dataclass
class ModelConfig:
    """One model preset: stage 1 builds InternVL-C from vision+text; stage 2 adds `qllama`; stage 3 uses
    `chat` (owned by models/chat/configuration.py)."""

    name: str = "tiny"
    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    qllama: QLLaMAConfig = field(default_factory=QLLaMAConfig)
    chat: Optional[ChatConfig] = None  # only stage 3 needs it
    embed_dim: int = 768
    clip_projector_heads: int = 16
    logit_scale_init: float = math.log(1 / 0.07)
    pretrained: Optional[str] = None  # whole InternVL-C/G checkpoint: our export or official InternVL-14B

    def validate(self) -> None:
        check_positive(self, "embed_dim", "clip_projector_heads")
        check_divisible("vision.hidden_size", self.vision.hidden_size, self.clip_projector_heads,
                        "clip_projector_heads")
        check_divisible("text.hidden_size", self.text.hidden_size, self.clip_projector_heads,
                        "clip_projector_heads")
        width = self.qllama.vision_width
        if width is not None and width != self.vision.hidden_size:
            raise ConfigError("qllama.vision_width", f"{width} != vision.hidden_size={self.vision.hidden_size}")

    def validate_all(self) -> None:
        """Validate every node (for code that builds a ModelConfig without Hydra); keys relative to this node."""
        for key, node in (("vision", self.vision), ("text", self.text), ("qllama", self.qllama),
                          ("chat", self.chat), ("", self)):
            if node is not None:
                with qualified(key):
                    node.validate()

    def validate_qllama(self) -> None:
        """Extra checks for building InternVL-G: the three stage-2 passes use custom 4-D masks."""
        self.validate_all()
        if self.text.attn_implementation == "flash_attention_2":
            raise ConfigError("text.attn_implementation", "QLLaMA's ITM/ITC/ITG passes need custom 4-D "
                              "attention masks, which flash_attention_2 cannot take; use sdpa or eager")
        need = self.qllama.num_query_tokens + 80
        if self.text.max_position_embeddings < need:
            raise ConfigError("text.max_position_embeddings",
                              f"{self.text.max_position_embeddings} < queries + 80 caption tokens = {need}")

    @property
    def vision_width(self) -> int:
        return self.qllama.vision_width or self.vision.hidden_size


def transformers_shape(cfg: Any) -> dict[str, int]:
    """Our shape names of a transformer (VisionTowerConfig, TextTowerConfig, ChatLLMConfig) -> the keyword
    arguments of transformers' configs: hidden_size, num_hidden_layers, num_attention_heads, intermediate_size."""
    return {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size}


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from `dataclasses.asdict` output (e.g. a saved checkpoint's JSON)."""
    data = dict(data)
    chat = data.pop("chat", None)
    if chat is not None:
        chat = dict(chat)
        llm = chat.pop("llm", None)
        chat = ChatConfig(**chat, llm=ChatLLMConfig(**llm) if llm is not None else None)
    return ModelConfig(
        vision=VisionTowerConfig(**data.pop("vision", {})),
        text=TextTowerConfig(**data.pop("text", {})),
        qllama=QLLaMAConfig(**data.pop("qllama", {})),
        chat=chat,
        **data,
    )


def model_config_to_dict(cfg: Any) -> dict[str, Any]:
    """ModelConfig (dataclass or OmegaConf node) -> plain dict."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def as_model_config(cfg: Any) -> ModelConfig:
    """Accept a ModelConfig, an OmegaConf node of one, or a dict; return a ModelConfig dataclass."""
    if isinstance(cfg, ModelConfig):
        return cfg
    return model_config_from_dict(model_config_to_dict(cfg) if not isinstance(cfg, dict) else cfg)
