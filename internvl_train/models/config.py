"""Structured config of the stage-1/2 models: InternViT, the LLaMA text tower, QLLaMA and the CLIP heads.

No torch import (Hydra validates configs before any model is built). Registered as `schema/model`; every
configs/model/*.yaml starts with `defaults: [/schema/model@_here_, _self_]`. Each validate() checks only its own
node with keys relative to it; internvl_train.config walks the tree and qualifies the keys.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig

NORM_TYPES = ("rms_norm", "layer_norm")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def _fail(key: str, reason: str) -> None:
    from internvl_train.config import ConfigError  # lazy: internvl_train.config imports this module

    raise ConfigError(key, reason)


def _check_positive(node: Any, *keys: str) -> None:
    for key in keys:
        if getattr(node, key) <= 0:
            _fail(key, f"must be > 0, got {getattr(node, key)}")


def _check_divisible(key: str, width: int, heads: int, heads_key: str) -> None:
    if width % heads:
        _fail(key, f"{width} is not divisible by {heads_key}={heads}")


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
        _check_positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "image_size",
                        "patch_size", "norm_eps")
        _check_divisible("hidden_size", self.hidden_size, self.num_heads, "num_heads")
        if self.image_size % self.patch_size:
            _fail("image_size", f"{self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.norm_type not in NORM_TYPES:
            _fail("norm_type", f"{self.norm_type!r} is not one of {list(NORM_TYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            _fail("attn_implementation", f"{self.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            _fail("drop_path_rate", f"must be in [0, 1), got {self.drop_path_rate}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image: patches + CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1


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
        _check_positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size",
                        "max_position_embeddings", "rms_norm_eps")
        _check_divisible("hidden_size", self.hidden_size, self.num_heads, "num_heads")
        if self.num_heads % self.kv_heads:
            _fail("num_kv_heads", f"num_heads={self.num_heads} is not a multiple of {self.kv_heads}")
        if self.vocab_size is not None and self.vocab_size <= 0:
            _fail("vocab_size", f"must be > 0 or null (from the tokenizer), got {self.vocab_size}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            _fail("attn_implementation", f"{self.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


@dataclass
class QLLaMAConfig:
    """Stage-2 additions to the text tower: learnable queries and cross-attention into the ViT tokens."""

    num_query_tokens: int = 96
    cross_attention_every: int = 2  # layer idx % every == 0 gets cross-attention (16 of 32 for LLaMA-7B)
    vision_width: Optional[int] = None  # None = vision.hidden_size
    query_init_std: float = 0.02

    def validate(self) -> None:
        _check_positive(self, "num_query_tokens", "cross_attention_every", "query_init_std")
        if self.vision_width is not None and self.vision_width <= 0:
            _fail("vision_width", f"must be > 0 or null (= vision.hidden_size), got {self.vision_width}")


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
        _check_positive(self, "embed_dim", "clip_projector_heads")
        _check_divisible("vision.hidden_size", self.vision.hidden_size, self.clip_projector_heads,
                         "clip_projector_heads")
        _check_divisible("text.hidden_size", self.text.hidden_size, self.clip_projector_heads,
                         "clip_projector_heads")
        width = self.qllama.vision_width
        if width is not None and width != self.vision.hidden_size:
            _fail("qllama.vision_width", f"{width} != vision.hidden_size={self.vision.hidden_size}")

    def validate_all(self) -> None:
        """Validate every node (for code that builds a ModelConfig without Hydra)."""
        for node in (self.vision, self.text, self.qllama, self.chat, self):
            if node is not None:
                node.validate()

    def validate_qllama(self) -> None:
        """Extra checks for building InternVL-G: the three stage-2 passes use custom 4-D masks."""
        self.validate_all()
        if self.text.attn_implementation == "flash_attention_2":
            _fail("text.attn_implementation", "QLLaMA's ITM/ITC/ITG passes need custom 4-D attention masks, "
                                              "which flash_attention_2 cannot take; use sdpa or eager")
        need = self.qllama.num_query_tokens + 80
        if self.text.max_position_embeddings < need:
            _fail("text.max_position_embeddings",
                  f"{self.text.max_position_embeddings} < queries + 80 caption tokens = {need}")

    @property
    def vision_width(self) -> int:
        return self.qllama.vision_width or self.vision.hidden_size


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
