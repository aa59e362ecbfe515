"""Structured config of the stage-3 chat model (InternVL-Chat: ViT -> pixel shuffle -> MLP -> LLM).

No torch import: Hydra validates this before any model is built. ModelConfig (models/config.py) holds it
as the field `chat`. validate() raises keys relative to its node (internvl_train/errors.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from internvl_train.errors import ConfigError, check_choice, check_divisible, check_positive, qualified
from internvl_train.models.internvit.configuration import ATTN_IMPLEMENTATIONS

PS_VERSIONS = ("v1", "v2")
BRIDGES = ("mlp", "mlp+qllama")
LLM_TYPES = ("llama", "qwen2")


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
        check_choice("model_type", self.model_type, LLM_TYPES)
        check_positive(self, "hidden_size", "num_layers", "num_heads", "intermediate_size")
        check_divisible("hidden_size", self.hidden_size, self.num_heads, "num_heads")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ConfigError("num_kv_heads", f"num_heads={self.num_heads} is not a multiple of {kv}")


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
    force_image_size: int = 448  # the tile size: the ViT's input resolution (position embeddings resized once)
    # Dynamic resolution (InternVL 1.5+): each image becomes min..max force_image_size tiles by aspect ratio, a
    # thumbnail appended when > 1 tile; false = one tile per image. The one home of the tiling knobs: stage 3
    # hands them to the SFT data pipeline and exports them in config.json, as the official chat models carry them.
    dynamic_image_size: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    use_thumbnail: bool = True
    vision_select_layer: int = -1  # hidden state of the ViT fed to the bridge (official `select_layer`)
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    bridge: str = "mlp"  # mlp | mlp+qllama (paper variant: QLLaMA query outputs through a second MLP)

    def validate(self) -> None:
        check_choice("ps_version", self.ps_version, PS_VERSIONS)
        check_choice("bridge", self.bridge, BRIDGES)
        check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        from data_pipelines.sft.templates import TEMPLATE_NAMES  # torch-free; lazy keeps this module standalone

        check_choice("template", self.template, TEMPLATE_NAMES)
        inverse = 1.0 / self.downsample_ratio if self.downsample_ratio > 0 else 0.0
        if not (0 < self.downsample_ratio <= 1) or abs(inverse - round(inverse)) > 1e-6:
            raise ConfigError("downsample_ratio", f"must be 1/k for an integer k >= 1, got {self.downsample_ratio}")
        for key in ("min_dynamic_patch", "max_dynamic_patch"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.max_dynamic_patch < self.min_dynamic_patch:
            raise ConfigError("max_dynamic_patch", f"must be >= min_dynamic_patch ({self.min_dynamic_patch}), "
                                                   f"got {self.max_dynamic_patch}")
        if self.llm_from_text_tower and self.llm_path is not None:
            raise ConfigError("llm_path", f"is {self.llm_path!r} while model.chat.llm_from_text_tower is true: "
                                          "pick one LLM (set model.chat.llm_from_text_tower=false to use llm_path)")
        if self.llm_path is None and self.llm is None and not self.llm_from_text_tower:
            raise ConfigError("llm_path", "set llm_path (a local HF causal-LM directory), an inline model.chat.llm, "
                                          "or model.chat.llm_from_text_tower=true")
        if self.llm is not None:
            with qualified("llm"):
                self.llm.validate()
