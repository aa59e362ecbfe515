"""Structured config of the stage-3 chat model (InternVL-Chat: ViT -> pixel shuffle -> MLP -> LLM).

No torch import: Hydra validates this before any model is built. ModelConfig (models/config.py) holds it
as the field `chat`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PS_VERSIONS = ("v1", "v2")
BRIDGES = ("mlp", "mlp+qllama")
LLM_TYPES = ("llama", "qwen2")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass
class ChatLLMConfig:
    """Architecture of an LLM built from scratch (tiny test/demo models, meta-device size planning).

    Ignored for weights when ChatConfig.llm_path is set: the local HF directory's own config wins."""

    model_type: str = "llama"  # llama | qwen2
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: Optional[int] = None  # None = num_heads (multi-head attention)
    intermediate_size: int = 128
    vocab_size: Optional[int] = None  # None = len(tokenizer) after the special tokens are added
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        _check_choice("model.chat.llm.model_type", self.model_type, LLM_TYPES)
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, key) <= 0:
                _fail(f"model.chat.llm.{key}", f"must be > 0, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            _fail("model.chat.llm.hidden_size", f"{self.hidden_size} is not divisible by num_heads={self.num_heads}")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            _fail("model.chat.llm.num_kv_heads", f"num_heads={self.num_heads} is not a multiple of {kv}")


@dataclass
class ChatConfig:
    """InternVL-Chat model options (stage 3, and official InternVL-Chat checkpoints)."""

    llm_path: Optional[str] = None  # local HF causal-LM directory (weights + tokenizer); never downloaded
    llm: Optional[ChatLLMConfig] = None  # inline LLM architecture when no llm_path (tests, demo, planning)
    # Stage 3: the LLM starts from the text tower (the LLaMA LM) of the stage-1/2 export the run starts from
    # (QLLaMA's cross-attention left out), with that export's tokenizer; `llm` then only sets
    # max_position_embeddings. The demo's stand-in for a pretrained LLM (the paper's Vicuna).
    llm_from_text_tower: bool = False
    downsample_ratio: float = 0.5
    ps_version: str = "v2"  # pixel-shuffle token order: v1 column-major (early chat models), v2 row-major
    template: str = "internvl2_5"  # conversation template (data_pipelines/sft/templates.py): the one home
    force_image_size: int = 448
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    vision_select_layer: int = -1  # hidden state of the ViT fed to the bridge (official `select_layer`)
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    bridge: str = "mlp"  # mlp | mlp+qllama (paper variant: QLLaMA query outputs through a second MLP)

    def validate(self) -> None:
        _check_choice("model.chat.ps_version", self.ps_version, PS_VERSIONS)
        _check_choice("model.chat.bridge", self.bridge, BRIDGES)
        _check_choice("model.chat.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        from data_pipelines.sft.templates import TEMPLATE_NAMES  # torch-free; lazy keeps this module standalone

        _check_choice("model.chat.template", self.template, TEMPLATE_NAMES)
        inverse = 1.0 / self.downsample_ratio if self.downsample_ratio > 0 else 0.0
        if not (0 < self.downsample_ratio <= 1) or abs(inverse - round(inverse)) > 1e-6:
            _fail("model.chat.downsample_ratio", f"must be 1/k for an integer k >= 1, got {self.downsample_ratio}")
        if self.max_dynamic_patch < 1:
            _fail("model.chat.max_dynamic_patch", f"must be >= 1, got {self.max_dynamic_patch}")
        if self.llm_from_text_tower and self.llm_path is not None:
            _fail("model.chat.llm_path", f"is {self.llm_path!r} while model.chat.llm_from_text_tower is true: pick one "
                                         "LLM (set model.chat.llm_from_text_tower=false to use llm_path)")
        if self.llm_path is None and self.llm is None and not self.llm_from_text_tower:
            _fail("model.chat.llm_path", "set llm_path (a local HF causal-LM directory), an inline model.chat.llm, "
                                         "or model.chat.llm_from_text_tower=true")
        if self.llm is not None:
            self.llm.validate()


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(key, f"{value!r} is not one of {list(choices)}")


def _fail(key: str, reason: str) -> None:
    from internvl_train.config import ConfigError  # lazy: internvl_train.config imports this module

    raise ConfigError(key, reason)
