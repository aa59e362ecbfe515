"""Activation memory: bytes of the tensors autograd saves for the backward, per sample, by formula.

Counted per token of a pre-norm transformer layer (width h, MLP width i, k/v width h_kv, e = bytes per
element: 2 bf16, 4 fp32) for the kernels this project runs (transformers' RMSNorm computes in fp32, SDPA
saves q, k, v, output and a log-sum-exp, never the s x s scores):

  RMSNorm       4 (its fp32 input) + 2e (normalised input and output, kept for the weight and the next matmul)
  LayerNorm     2e (input, output)
  attention     (2h + 2h_kv) e (q, k, v, out) + h e (o_proj input); ViT q/k RMSNorm +2 (4 + e) h;
                LayerScale +2 h e (when it trains)
  MLP           SwiGLU 4 i e (gate, act, up, act*up); GELU 2 i e (fc1 out, gelu out)

LLaMA layer in bf16 with h_kv = h: 26 h + 8 i bytes per token (47.5 h for i = 2.7 h); InternViT-6B layer:
42 h + 4 i. A layer whose weights are frozen but which gradients cross (stage 2's frozen LLaMA, a frozen LLM
under a training mlp1) saves no matmul inputs: RMSNorm 4, attention (2h + 2h_kv) e, SwiGLU 3 i e.
Gradient checkpointing keeps only each layer's input (h e per token) and recomputes one layer at a time in the
backward: peak = inputs of every layer + one layer's full activations. Layers no gradient reaches (a frozen
ViT, layers before the first trainable one) save nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

RMS_FP32_INPUT = 4  # transformers' RMSNorm upcasts to fp32 and keeps that copy for its backward


@dataclass(frozen=True)
class LayerShape:
    """One transformer layer as the activation formula sees it (per token)."""

    width: int
    intermediate: int
    kv_width: int
    mlp: str = "swiglu"  # swiglu (LLaMA/Qwen) | gelu (InternViT)
    norm: str = "rms_norm"  # rms_norm | layer_norm
    qk_norm: bool = False  # InternViT-6B: RMSNorm over the full width of q and k
    layer_scale: bool = False  # InternViT: lambda_1/lambda_2 (a product that keeps its input)


def norm_bytes(norm: str, e: int, weights_train: bool = True) -> int:
    """Bytes per element a pre-norm keeps, including its output saved by the matmuls after it."""
    if norm == "layer_norm":
        return e + (e if weights_train else 0)
    return RMS_FP32_INPUT + (2 * e if weights_train else 0)


def layer_bytes_per_token(shape: LayerShape, e: int, weights_train: bool = True) -> float:
    """Saved bytes per token of one layer without checkpointing (formula in the module docstring)."""
    h, i, kv = shape.width, shape.intermediate, shape.kv_width
    per_h = 2 * norm_bytes(shape.norm, e, weights_train)
    attention = (2 * h + 2 * kv) * e + (h * e if weights_train else 0)
    if shape.qk_norm:
        attention += 2 * (RMS_FP32_INPUT + (e if weights_train else 0)) * h
    if shape.layer_scale and weights_train:
        attention += 2 * h * e
    saved_mlp_tensors = {"swiglu": 3, "gelu": 1}[shape.mlp] + (1 if weights_train else 0)
    return per_h * h + attention + saved_mlp_tensors * i * e


@dataclass(frozen=True)
class LayerGroup:
    """`layers` identical layers (those gradients reach) over `tokens` tokens per sample."""

    name: str
    layers: int
    tokens: int
    full_bytes_per_layer: float  # per sample, no checkpointing
    boundary_bytes_per_layer: float  # per sample: the layer input a checkpointed layer keeps
    checkpointed: bool  # as the recipe configures it

    def bytes(self, checkpointing: bool) -> float:
        return self.layers * (self.boundary_bytes_per_layer if checkpointing else self.full_bytes_per_layer)

    def recompute_bytes(self) -> float:
        return self.full_bytes_per_layer if self.layers else 0.0


def transformer_group(name: str, shape: LayerShape, layers: int, tokens: int, e: int, checkpointed: bool,
                      weights_train: bool = True) -> LayerGroup:
    return LayerGroup(name, layers, tokens, tokens * layer_bytes_per_token(shape, e, weights_train),
                      tokens * shape.width * e, checkpointed)


@dataclass
class ActivationEstimate:
    """Per-sample activation bytes: layer groups (affected by checkpointing) + terms outside the layers."""

    groups: list[LayerGroup]
    extras: dict[str, float]  # name -> bytes per sample (embeddings, heads, logits, ...)

    def held(self, checkpointing: bool | None) -> float:
        """Saved bytes per sample at the end of the forward; checkpointing None = as the recipe configures."""
        return sum(g.bytes(g.checkpointed if checkpointing is None else checkpointing) for g in self.groups) + \
            sum(self.extras.values())

    def peak(self, checkpointing: bool | None) -> float:
        """held + the recomputed layer of the largest checkpointed group during the backward."""
        ckpt = [g for g in self.groups if (g.checkpointed if checkpointing is None else checkpointing)]
        return self.held(checkpointing) + max((g.recompute_bytes() for g in ckpt), default=0.0)


def layers_on_gradient_path(layers: Iterable[nn.Module], upstream_trains: bool) -> int:
    """How many layers save activations: all when something before them trains (gradients flow through all),
    else those from the first layer with a trainable parameter on."""
    layers = list(layers)
    if upstream_trains:
        return len(layers)
    for index, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return len(layers) - index
    return 0


def any_trainable(*modules: nn.Module) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


def pooling_head_bytes(tokens: int, width: int, e: int) -> float:
    """Attention pooling (clip_projector): tokens, LayerNorm-ed k and v inputs, k and v: 5 tensors of the input."""
    return 5.0 * tokens * width * e


def logits_bytes(tokens: int, vocab: int, e: int) -> float:
    """LM head output (e) + the fp32 log-probabilities cross-entropy keeps (4): s V (e + 4)."""
    return float(tokens) * vocab * (e + 4)
