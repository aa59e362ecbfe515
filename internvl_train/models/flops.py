"""Model FLOP counts for MFU, per the InternVL paper's accounting (multiply-add = 2 FLOPs).

  ViT forward per image      2 * N * T + 4 * L * d * T^2     (T = patches + 1)
  training                   3 x forward (backward ~ 2 x forward)
  decoder training per token 6 * N + 12 * L * d * s          (s = sequence length)
  frozen decoder, gradients passing through it: 4 * N + 12 * L * d * s (no weight gradients)
N counts the weights that do matmuls on every token (embedding tables excluded).
"""
from __future__ import annotations

from typing import Any

from torch import nn


def vision_forward_flops(n_params: float, num_layers: int, width: int, tokens: int) -> float:
    return 2.0 * n_params * tokens + 4.0 * num_layers * width * tokens**2


def vision_train_flops(n_params: float, num_layers: int, width: int, tokens: int) -> float:
    return 3.0 * vision_forward_flops(n_params, num_layers, width, tokens)


def decoder_train_flops_per_token(n_params: float, num_layers: int, width: int, seq_len: int,
                                  weights_train: bool = True) -> float:
    """Forward 2N + backward 4N (input and weight gradients); a frozen decoder that gradients cross skips the
    weight half of the backward (4N). Attention (12 L d s) needs its full backward either way."""
    return (6.0 if weights_train else 4.0) * n_params + 12.0 * num_layers * width * seq_len


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


def chat_train_flops_per_row(model: Any, tiles: int, tokens: int, attention_span: int,
                             vision_grad_fraction: float, llm_weights_train: bool = True) -> float:
    """One micro-batch row of InternVL-Chat (a sample, or a packed row of several), forward + backward.

    ViT per tile: forward, plus a backward (2 x forward) over the fraction of its layers gradients reach (0 when
    frozen, 1 when it trains). mlp1 trains on every image token. LLM: 6N + 12 L d s per token, s =
    `attention_span` (a packed row's samples attend only to themselves: the longest sample, not the row), 4N
    when its weights are frozen; N includes the LM head (every position is scored)."""
    inner = model.model
    vcfg = inner.vision_tower.config
    vision_tokens = (_side(vcfg.image_size) // _side(vcfg.patch_size)) ** 2 + 1
    vision_fwd = vision_forward_flops(matmul_params(inner.vision_tower), vcfg.num_hidden_layers, vcfg.hidden_size,
                                      vision_tokens)
    vision = tiles * vision_fwd * (1.0 + 2.0 * vision_grad_fraction)
    image_tokens = tiles * int(model.config.image_seq_length)
    bridge = 6.0 * matmul_params(inner.multi_modal_projector) * image_tokens
    tcfg = model.config.text_config
    llm_params = matmul_params(inner.language_model) + matmul_params(model.lm_head)
    llm = tokens * decoder_train_flops_per_token(llm_params, tcfg.num_hidden_layers, tcfg.hidden_size,
                                                 attention_span, llm_weights_train)
    return vision + bridge + llm


def _side(size: Any) -> int:
    """An HF config's image/patch size: an int or a (height, width) pair (square here)."""
    return int(size[0] if isinstance(size, (list, tuple)) else size)
