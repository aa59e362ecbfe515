"""InternViT as transformers' InternVLVisionModel, plus the stochastic depth (drop-path) it lacks.

InternVLVisionModel holds InternViT's math: full-width q/k RMSNorm, LayerScale (`lambda_1/2`), RMS or
LayerNorm blocks, CLS first, no final norm when `use_mean_pooling=True`; only its q/k norm eps is fixed at
1e-6, where InternViT uses `layer_norm_eps` (use_configured_qk_norm_eps). It has no drop-path, which InternViT
training uses on both residual branches. We add it with forward hooks on each layer's attention and MLP:
state-dict keys stay transformers' own, and because LayerScale is a per-channel product, dropping the branch
before or after it is the same function. Drop-path runs only while the layer is in train mode and has a
trainable parameter, so a frozen tower never drops paths (an official-code defect).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import InternVLVisionConfig, InternVLVisionModel

from internvl_train.models.config import transformers_shape
from internvl_train.models.internvit.configuration import VisionTowerConfig
from internvl_train.models.zero3 import construct_hf


class DropPath(nn.Module):
    """Per-sample residual-branch drop with survival rescaling; hooked onto a layer's branch modules."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}"

    def active_for(self, branch: nn.Module) -> bool:
        return self.training and self.drop_prob > 0 and any(p.requires_grad for p in branch.parameters())

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def attention_hook(self, module: nn.Module, args: Any, output: tuple) -> tuple | None:
        if not self.active_for(module):
            return None
        return (self.drop(output[0]),) + tuple(output[1:])

    def mlp_hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        return self.drop(output) if self.active_for(module) else None


def internvl_vision_config(cfg: VisionTowerConfig) -> InternVLVisionConfig:
    """Our VisionTowerConfig -> transformers' InternVLVisionConfig (a fresh object per model)."""
    return InternVLVisionConfig(
        **transformers_shape(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        norm_type=cfg.norm_type,
        layer_norm_eps=cfg.norm_eps,
        use_qk_norm=cfg.qk_normalization,
        attention_bias=cfg.qkv_bias,
        layer_scale_init_value=cfg.layer_scale_init,
        hidden_act="gelu",  # erf GELU, as InternViT
        use_mean_pooling=True,  # => no final norm, as InternViT
        use_absolute_position_embeddings=True,
        attn_implementation=cfg.attn_implementation,
    )


def add_drop_path(model: InternVLVisionModel, drop_path_rate: float) -> None:
    """Attach drop-path to every layer, rate rising linearly from 0 to `drop_path_rate` (as InternViT)."""
    layers = model.encoder.layer
    steps = max(len(layers) - 1, 1)  # plain floats: this also runs under the meta device / zero.Init
    rates = [drop_path_rate * i / steps for i in range(len(layers))] if len(layers) > 1 else [drop_path_rate]
    for layer, rate in zip(layers, rates):
        if rate <= 0:
            continue
        layer.drop_path = DropPath(rate)  # a parameter-free child: follows train()/eval(), no state-dict key
        layer.attention.register_forward_hook(layer.drop_path.attention_hook)
        layer.mlp.register_forward_hook(layer.drop_path.mlp_hook)


TRANSFORMERS_QK_NORM_EPS = 1e-6  # what InternVLVisionAttention gives its q/k RMSNorm, whatever the config says


def use_configured_qk_norm_eps(model: InternVLVisionModel) -> None:
    """Give the q/k RMSNorm of every attention the config's `layer_norm_eps`, as InternViT does (transformers
    fixes it at 1e-6). A plain float: works on the meta device and under zero.Init, adds no state-dict key."""
    for layer in model.encoder.layer:
        for norm in (layer.attention.q_norm, layer.attention.k_norm):
            if hasattr(norm, "variance_epsilon"):  # nn.Identity without q/k normalisation
                norm.variance_epsilon = model.config.layer_norm_eps


def follows_transformers_qk_norm(config: InternVLVisionConfig) -> bool:
    """True when plain transformers builds the same q/k norms as use_configured_qk_norm_eps."""
    return not config.use_qk_norm or config.layer_norm_eps == TRANSFORMERS_QK_NORM_EPS


def build_vision_tower(cfg: VisionTowerConfig) -> InternVLVisionModel:
    """InternViT with drop-path and (optionally) activation checkpointing; weights are initialised only."""
    model = construct_hf(lambda: InternVLVisionModel(internvl_vision_config(cfg)))
    use_configured_qk_norm_eps(model)
    add_drop_path(model, cfg.drop_path_rate)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model

