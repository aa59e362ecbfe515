"""Model FLOP counts for MFU, per the InternVL paper's accounting (multiply-add = 2 FLOPs).

  ViT forward per image      2 * N * T + 4 * L * d * T^2     (T = patches + 1)
  training                   3 x forward (backward ~ 2 x forward)
  decoder training per token 6 * N + 12 * L * d * s          (s = sequence length)
N counts the weights that do matmuls on every token (embedding tables excluded).
"""
from __future__ import annotations

from typing import Any

from torch import nn


def vision_forward_flops(n_params: float, num_layers: int, width: int, tokens: int) -> float:
    return 2.0 * n_params * tokens + 4.0 * num_layers * width * tokens**2


def vision_train_flops(n_params: float, num_layers: int, width: int, tokens: int) -> float:
    return 3.0 * vision_forward_flops(n_params, num_layers, width, tokens)


def decoder_train_flops_per_token(n_params: float, num_layers: int, width: int, seq_len: int) -> float:
    return 6.0 * n_params + 12.0 * num_layers * width * seq_len


def matmul_params(module: nn.Module) -> int:
    """Parameters excluding embedding tables (they are lookups, not matmuls)."""
    embeddings = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in embeddings)


def internvl_c_train_flops_per_sample(model: Any, text_len: int) -> float:
    """One image-caption pair through InternVL-C, forward + backward (ViT and text tower both trained)."""
    cfg = model.config
    vision = vision_train_flops(matmul_params(model.vision), cfg.vision.num_layers, cfg.vision.hidden_size,
                                cfg.vision.num_tokens)
    text_params = matmul_params(model.text.model)  # the LM head is not used by ITC
    text = text_len * decoder_train_flops_per_token(text_params, cfg.text.num_layers, cfg.text.hidden_size,
                                                    text_len)
    return vision + text


def internvl_g_train_flops_per_sample(model: Any, text_len: int) -> float:
    """One pair through stage 2: the frozen ViT forward once, then three QLLaMA passes (ITM, ITC, ITG) over
    queries + text counted as decoder training (6N + 12 L d s per token; N includes the cross-attention,
    which runs on the queries only, so this slightly over-counts)."""
    cfg = model.config
    vision = vision_forward_flops(matmul_params(model.vision), cfg.vision.num_layers, cfg.vision.hidden_size,
                                  cfg.vision.num_tokens)
    seq = cfg.qllama.num_query_tokens + text_len
    per_token = decoder_train_flops_per_token(matmul_params(model.text.model), cfg.text.num_layers,
                                              cfg.text.hidden_size, seq)
    return vision + 3 * seq * per_token
