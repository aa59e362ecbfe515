"""QLLaMA (queries + cross-attention into the ViT) and the attention-pooling heads equal a plain-torch
reference written from the official InternVL-14B definitions (internvl_g modeling_qllama.py: LlamaCrossAttention,
LlamaDecoderLayer; modeling_internvl.py: CrossAttention, AttentiveBlock, AttentionPoolingBlock).

Every weight is random (norm gains and biases included): with default init the k and v LayerNorms are
identical and a swap of them could not show."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from internvl_train.models.internvl_c.heads import AttentionPooling
from internvl_train.models.qllama.modeling import QLlamaModel, VisionCrossAttention
from internvl_train.models.qllama.masks import stage2_attention_mask

WIDTH, HEADS, VISION_WIDTH, LAYERS, Q, T, N_VISION = 32, 4, 24, 3, 4, 5, 7
EPS, ROPE_THETA = 1e-6, 10000.0
ATOL = RTOL = 1e-5


def _config() -> LlamaConfig:
    return LlamaConfig(hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=HEADS, intermediate_size=48, vocab_size=50, rms_norm_eps=EPS,
                       rope_theta=ROPE_THETA, max_position_embeddings=64, use_cache=False,
                       attn_implementation="sdpa")


@torch.no_grad()
def _randomise(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random weights in place (gains around 1, the rest around 0); returns a detached copy by name."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen) * 0.2
        p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- the reference, from the official definitions --------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def split_heads(x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, HEADS, d // HEADS).transpose(1, 2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def rope(x: torch.Tensor) -> torch.Tensor:
    """LLaMA rotary embedding over positions 0..S-1 (queries and text together), half-split rotation."""
    d, s = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(s, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + rotated * sin


def ref_cross_attention(sd: dict, p: str, queries: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    """q from RMSNorm(text width) of the queries; k and v from one RMSNorm(vision width) of all ViT tokens;
    no RoPE, no mask, no bias."""
    q = split_heads(rms_norm(queries, sd[p + "norm1.weight"]) @ sd[p + "q_proj.weight"].T)
    kv_in = rms_norm(vision, sd[p + "norm2.weight"])
    k = split_heads(kv_in @ sd[p + "k_proj.weight"].T)
    v = split_heads(kv_in @ sd[p + "v_proj.weight"].T)
    return attend(q, k, v) @ sd[p + "o_proj.weight"].T


def ref_decoder_layer(sd: dict, p: str, x: torch.Tensor, mask: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    """Self-attention (RoPE, additive mask) -> cross-attention on the first Q positions -> SwiGLU MLP,
    each pre-norm with a residual."""
    h = rms_norm(x, sd[p + "input_layernorm.weight"])
    q, k, v = (split_heads(h @ sd[f"{p}self_attn.{n}_proj.weight"].T) for n in "qkv")
    x = x + attend(rope(q), rope(k), v, mask) @ sd[p + "self_attn.o_proj.weight"].T
    if p + "cross_attn.q_proj.weight" in sd:
        queries = x[:, :Q]
        x = torch.cat([queries + ref_cross_attention(sd, p + "cross_attn.", queries, vision), x[:, Q:]], dim=1)
    h = rms_norm(x, sd[p + "post_attention_layernorm.weight"])
    mlp = (F.silu(h @ sd[p + "mlp.gate_proj.weight"].T) * (h @ sd[p + "mlp.up_proj.weight"].T))
    return x + mlp @ sd[p + "mlp.down_proj.weight"].T


def ref_qllama(sd: dict, embeds: torch.Tensor, mask: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    x = embeds
    for i in range(LAYERS):
        x = ref_decoder_layer(sd, f"layers.{i}.", x, mask, vision)
    return rms_norm(x, sd["norm.weight"])


def ref_attention_pooling(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Query = mean of the raw tokens; separate LayerNorms for q, k and v inputs; biased q/k/v; proj."""
    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        return split_heads(x @ sd[f"cross_attn.{name}.weight"].T + sd[f"cross_attn.{name}_bias"])

    query = tokens.mean(1, keepdim=True)
    q, k, v = lin(ln(query, "norm1_q"), "q"), lin(ln(tokens, "norm1_k"), "k"), lin(ln(tokens, "norm1_v"), "v")
    out = attend(q, k, v) @ sd["cross_attn.proj.weight"].T + sd["cross_attn.proj.bias"]
    return out.squeeze(1)


# ---- ours against the reference ----------------------------------------------------------------------
def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(2, Q + T, WIDTH, generator=gen)
    vision = torch.randn(2, N_VISION, VISION_WIDTH, generator=gen) * 2 + 0.5  # not already normalised
    text_mask = torch.ones(2, T, dtype=torch.long)
    text_mask[1, -2:] = 0  # right padding in the second row
    return embeds, vision, text_mask


@torch.no_grad()
def test_cross_attention_matches_official_math():
    attn = VisionCrossAttention(_config(), VISION_WIDTH).eval()
    sd = _randomise(attn, seed=1)
    embeds, vision, _ = _inputs()
    torch.testing.assert_close(attn(embeds[:, :Q], vision), ref_cross_attention(sd, "", embeds[:, :Q], vision),
                               atol=ATOL, rtol=RTOL)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["itm", "itc", "itg"])
def test_qllama_layers_match_official_math(kind):
    model = QLlamaModel(_config(), VISION_WIDTH, cross_attention_every=2).eval()
    sd = _randomise(model, seed=2)
    assert [i for i in range(LAYERS) if f"layers.{i}.cross_attn.q_proj.weight" in sd] == [0, 2]
    embeds, vision, text_mask = _inputs()
    mask = stage2_attention_mask(kind, text_mask, Q, embeds.dtype)
    ours = model(inputs_embeds=embeds, attention_mask=mask, vision_states=vision, num_queries=Q)
    torch.testing.assert_close(ours, ref_qllama(sd, embeds, mask, vision), atol=ATOL, rtol=RTOL)


@torch.no_grad()
@pytest.mark.parametrize("dim,out_dim", [(VISION_WIDTH, 16), (WIDTH, 16)])  # clip_projector, clip_projector2
def test_attention_pooling_matches_official_math(dim, out_dim):
    pool = AttentionPooling(dim, HEADS, out_dim).eval()
    sd = _randomise(pool, seed=3)
    tokens = torch.randn(3, N_VISION, dim, generator=torch.Generator().manual_seed(4)) * 2 + 0.5
    torch.testing.assert_close(pool(tokens), ref_attention_pooling(sd, tokens), atol=ATOL, rtol=RTOL)
