"""Random state dicts in the official InternViT / InternVL-14B layouts, built from shapes alone (not from our
model), so adapter tests cannot pass by construction."""
from __future__ import annotations

import torch

from internvl_train.models.config import ModelConfig
from internvl_train.models.internvit.configuration import VisionTowerConfig


def _t(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * 0.2


def _norm(prefix: str, width: int, layer_norm: bool, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": 1 + _t(width, gen=gen)}
    if layer_norm:
        out[f"{prefix}.bias"] = _t(width, gen=gen)
    return out


def official_internvit(cfg: VisionTowerConfig, layout: str = "hf", seed: int = 0) -> dict[str, torch.Tensor]:
    """InternViT weights with official names: layout 'hf' (remote code) or 'pth' (original)."""
    gen = torch.Generator().manual_seed(seed)
    c, p, ln = cfg.hidden_size, cfg.patch_size, cfg.norm_type == "layer_norm"
    n = (cfg.image_size // p) ** 2 + 1
    hf = layout == "hf"
    sd = {
        ("embeddings.class_embedding" if hf else "cls_token"): _t(1, 1, c, gen=gen),
        ("embeddings.position_embedding" if hf else "pos_embed"): _t(1, n, c, gen=gen),
        ("embeddings.patch_embedding.weight" if hf else "patch_embed.proj.weight"): _t(c, 3, p, p, gen=gen),
        ("embeddings.patch_embedding.bias" if hf else "patch_embed.proj.bias"): _t(c, gen=gen),
    }
    for i in range(cfg.num_layers):
        b = f"encoder.layers.{i}." if hf else f"blocks.{i}."
        sd.update(_norm(b + "norm1", c, ln, gen))
        sd.update(_norm(b + "norm2", c, ln, gen))
        sd[b + "attn.qkv.weight"] = _t(3 * c, c, gen=gen)
        if cfg.qkv_bias:
            sd[b + "attn.qkv.bias"] = _t(3 * c, gen=gen)
        if cfg.qk_normalization:
            sd.update(_norm(b + "attn.q_norm", c, ln, gen))
            sd.update(_norm(b + "attn.k_norm", c, ln, gen))
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = _t(c, c, gen=gen), _t(c, gen=gen)
        sd[b + "mlp.fc1.weight"] = _t(cfg.intermediate_size, c, gen=gen)
        sd[b + "mlp.fc1.bias"] = _t(cfg.intermediate_size, gen=gen)
        sd[b + "mlp.fc2.weight"] = _t(c, cfg.intermediate_size, gen=gen)
        sd[b + "mlp.fc2.bias"] = _t(c, gen=gen)
        sd[b + ("ls1" if hf else "ls1.gamma")] = _t(c, gen=gen)
        sd[b + ("ls2" if hf else "ls2.gamma")] = _t(c, gen=gen)
    return sd


def _pooling(prefix: str, dim: int, out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    sd = {}
    for name in ("norm1_q", "norm1_k", "norm1_v"):
        sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"] = 1 + _t(dim, gen=gen), _t(dim, gen=gen)
    for name in "qkv":
        sd[f"{prefix}.cross_attn.{name}.weight"] = _t(dim, dim, gen=gen)
        sd[f"{prefix}.cross_attn.{name}_bias"] = _t(dim, gen=gen)
    sd[f"{prefix}.cross_attn.proj.weight"] = _t(out, dim, gen=gen)
    sd[f"{prefix}.cross_attn.proj.bias"] = _t(out, gen=gen)
    return sd


def official_internvl14b(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """InternVL-14B weights with official names (vision_model.*, qllama.*, heads), tiny sizes from `cfg`."""
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {f"vision_model.{k}": v for k, v in official_internvit(cfg.vision, "hf", seed).items()}
    t, d, vw = cfg.text, cfg.text.hidden_size, cfg.vision.hidden_size
    sd["qllama.model.embed_tokens.weight"] = _t(t.vocab_size, d, gen=gen)
    sd["qllama.model.norm.weight"] = 1 + _t(d, gen=gen)
    sd["qllama.lm_head.weight"] = _t(t.vocab_size, d, gen=gen)
    for i in range(t.num_layers):
        b = f"qllama.model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[b + f"self_attn.{name}.weight"] = _t(d, d, gen=gen)
        sd[b + "self_attn.rotary_emb.inv_freq"] = torch.ones(d // t.num_heads // 2)  # old LLaMA buffer
        for name in ("gate_proj", "up_proj"):
            sd[b + f"mlp.{name}.weight"] = _t(t.intermediate_size, d, gen=gen)
        sd[b + "mlp.down_proj.weight"] = _t(d, t.intermediate_size, gen=gen)
        sd[b + "input_layernorm.weight"] = 1 + _t(d, gen=gen)
        sd[b + "post_attention_layernorm.weight"] = 1 + _t(d, gen=gen)
        if i % cfg.qllama.cross_attention_every == 0:
            sd[b + "cross_attn.q_proj.weight"] = _t(d, d, gen=gen)
            sd[b + "cross_attn.o_proj.weight"] = _t(d, d, gen=gen)
            sd[b + "cross_attn.k_proj.weight"] = _t(d, vw, gen=gen)
            sd[b + "cross_attn.v_proj.weight"] = _t(d, vw, gen=gen)
            sd[b + "cross_attn.norm1.weight"] = 1 + _t(d, gen=gen)
            sd[b + "cross_attn.norm2.weight"] = 1 + _t(vw, gen=gen)
    sd["query_tokens"] = _t(1, cfg.qllama.num_query_tokens, d, gen=gen)
    sd["text_projection"] = _t(d, cfg.embed_dim, gen=gen)
    sd["logit_scale"] = torch.tensor(2.5)
    sd.update(_pooling("clip_projector", vw, cfg.embed_dim, gen))
    sd.update(_pooling("clip_projector2", d, cfg.embed_dim, gen))
    sd["itm_head.weight"], sd["itm_head.bias"] = _t(2, d, gen=gen), _t(2, gen=gen)
    return sd
