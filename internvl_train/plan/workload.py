"""What one sample costs in each stage: its token counts, activation bytes (per sample) and training FLOPs.

A "sample" is what trainer.micro_batch_size counts: an image-caption pair in stages 1 and 2, a row in stage 3
(one conversation, or a packed row of several). Token counts are upper bounds: captions at stage.max_text_len,
SFT rows full (max_packed_tokens packed, max_seq_len otherwise) with as many tiles as the row may hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from internvl_train.models import flops
from internvl_train.models.config import as_model_config
from internvl_train.plan.activations import (ActivationEstimate, LayerGroup, LayerShape, any_trainable,
                                             layers_on_gradient_path, logits_bytes, norm_bytes, pooling_head_bytes,
                                             transformer_group)
from internvl_train.plan.memory import WEIGHT_BYTES
from internvl_train.plan.meta_model import PlannedModel


@dataclass
class Workload:
    unit: str  # what one sample is
    shape: str  # its token counts, in words
    activations: ActivationEstimate
    flops_per_sample: float


def vit_shape(vision: Any) -> LayerShape:
    """An InternViT layer from model.vision (VisionTowerConfig)."""
    return LayerShape(vision.hidden_size, vision.intermediate_size, vision.hidden_size, mlp="gelu",
                      norm=vision.norm_type, qk_norm=vision.qk_normalization, layer_scale=True)


def llama_shape(width: int, intermediate: int, heads: int, kv_heads: int) -> LayerShape:
    return LayerShape(width, intermediate, width * kv_heads // heads)


def build_workload(cfg: Any, planned: PlannedModel, ranks: int) -> Workload:
    """The per-sample costs of `cfg`'s stage for `planned` (its meta model) over `ranks` data-parallel ranks."""
    builders = {"internvl_c": _contrastive, "internvl_g": _generative, "chat": _chat}
    return builders[planned.kind](cfg, planned.model, WEIGHT_BYTES[cfg.trainer.precision], ranks)


# ---- stage 1 -------------------------------------------------------------------------------------------------
def _contrastive(cfg: Any, model: Any, e: int, ranks: int) -> Workload:
    from internvl_train.stages.config import resolved_text_lm_weight

    vcfg, tcfg, s = model.config.vision, model.config.text, cfg.stage.max_text_len
    vision_layers = layers_on_gradient_path(model.vision.encoder.layer, any_trainable(model.vision.embeddings))
    text_layers = layers_on_gradient_path(model.text.model.layers, any_trainable(model.text.model.embed_tokens))
    groups = [transformer_group("ViT layers", vit_shape(vcfg), vision_layers, vcfg.num_tokens, e,
                                vcfg.gradient_checkpointing),
              transformer_group("text layers", _text_shape(tcfg), text_layers, s, e, tcfg.gradient_checkpointing)]
    extras = {"clip_projector (pooling)": pooling_head_bytes(vcfg.num_tokens, vcfg.hidden_size, e),
              "text final norm": s * tcfg.hidden_size * norm_bytes("rms_norm", e)}
    if any_trainable(model.vision.embeddings):
        extras["pixels (patch conv input)"] = 3 * vcfg.image_size**2 * e
    if resolved_text_lm_weight(cfg) > 0:
        extras["text LM logits"] = logits_bytes(s, model.text.config.vocab_size, e)
    return Workload("image-caption pair", f"{vcfg.num_tokens} ViT tokens, {s} caption tokens",
                    ActivationEstimate(groups, extras), flops.internvl_c_train_flops_per_sample(model, s))


def _text_shape(tcfg: Any) -> LayerShape:
    return llama_shape(tcfg.hidden_size, tcfg.intermediate_size, tcfg.num_heads, tcfg.kv_heads)


# ---- stage 2 -------------------------------------------------------------------------------------------------
def _generative(cfg: Any, model: Any, e: int, ranks: int) -> Workload:
    """The frozen ViT runs without a graph; QLLaMA runs the query pass (ITC image side), ITM on 3 pairs per
    sample (the positive and two hard negatives), ITG, and the text pass when the LLaMA weights train."""
    vcfg, tcfg, st = model.config.vision, model.config.text, cfg.stage
    q, t, tv = model.config.qllama.num_query_tokens, st.max_text_len, vcfg.num_tokens
    llama_trains = bool(st.train_qllama or st.lora_rank)
    query_passes = 1 + 3 + 1  # query_outputs, ITM x 3, ITG: each cross-attends to the ViT tokens
    tokens = q + 3 * (q + t) + (q + t) + (t if llama_trains else 0)
    layers = len(model.text.model.layers)
    cross_layers = sum(layer.cross_attn is not None for layer in model.text.model.layers)
    groups = [transformer_group("QLLaMA layers (all passes)", _text_shape(tcfg), layers, tokens, e,
                                tcfg.gradient_checkpointing, weights_train=llama_trains),
              _cross_attention_group(tcfg.hidden_size, vcfg.hidden_size, q, tv, cross_layers, query_passes, e,
                                     tcfg.gradient_checkpointing)]
    gathered = ranks * tv * vcfg.hidden_size * e  # all ranks' ViT tokens, for the ITM negatives
    extras = {"ViT tokens (no graph)": tv * vcfg.hidden_size * e,
              "ViT tokens gathered for ITM": gathered,
              "QLLaMA final norm": tokens * tcfg.hidden_size * norm_bytes("rms_norm", e, llama_trains),
              "clip_projector2 (pooling)": pooling_head_bytes(q, tcfg.hidden_size, e),
              "ITG logits": logits_bytes(t, model.text.config.vocab_size, e)}
    return Workload("image-caption pair", f"{tv} ViT tokens (frozen), {q} queries, {t} caption tokens, "
                                          f"QLLaMA passes: query, ITM x3, ITG" + (", text" if llama_trains else ""),
                    ActivationEstimate(groups, extras), flops.internvl_g_train_flops_per_sample(model, t))


def _cross_attention_group(width: int, vision_width: int, queries: int, vision_tokens: int, layers: int,
                           passes: int, e: int, checkpointed: bool) -> LayerGroup:
    """Cross-attention (trainable) per layer and pass: RMSNorm of the queries, RMSNorm of the ViT tokens (no
    gradient into them: 2e), q, k, v, out and the o_proj input. Checkpointing keeps nothing extra (its inputs
    are the layer's)."""
    per_pass = (queries * width * (norm_bytes("rms_norm", e) + 3 * e) + vision_tokens * vision_width * 2 * e
                + 2 * vision_tokens * width * e)
    return LayerGroup("QLLaMA cross-attention", layers, passes * queries, passes * per_pass, 0.0, checkpointed)


# ---- stage 3 -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SftRow:
    tokens: int  # LLM tokens per row
    attention_span: int  # the longest sample a token attends over
    tiles: int  # image tiles per row
    packed: bool


def sft_row(sft: Any, chat: Any, image_tokens_per_tile: int) -> SftRow:
    """An SFT row at its largest: full of tokens and holding as many tiles as both the per-image tile limit and
    the row's limits allow (tiles per sample: model.chat.max_dynamic_patch (+ thumbnail), 1 without dynamic
    resolution). `sft` is data.sft, `chat` model.chat (the tiling's home)."""
    per_image = chat.max_dynamic_patch + (1 if chat.use_thumbnail and chat.max_dynamic_patch > 1 else 0) \
        if chat.dynamic_image_size else 1
    tokens = sft.max_packed_tokens if sft.packing else sft.max_seq_len
    fit = tokens // image_tokens_per_tile
    tiles = min(sft.max_tiles_per_row, fit) if sft.packing else min(per_image, sft.max_tiles_per_row, fit)
    return SftRow(tokens, min(sft.max_seq_len, tokens), tiles, bool(sft.packing))


def _chat(cfg: Any, model: Any, e: int, ranks: int) -> Workload:
    inner, mcfg = model.model, as_model_config(cfg.model)
    vcfg, text_config = mcfg.vision, model.config.text_config
    row = sft_row(cfg.data.sft, mcfg.chat, int(model.config.image_seq_length))
    vision_tokens = (mcfg.chat.force_image_size // vcfg.patch_size) ** 2 + 1
    vit = inner.vision_tower
    vision_layers = layers_on_gradient_path(vit.encoder.layer, any_trainable(vit.embeddings))
    bridge_trains = any_trainable(inner.multi_modal_projector)
    llm_trains = any_trainable(inner.language_model, model.lm_head)
    llm_layers = layers_on_gradient_path(inner.language_model.layers, bool(vision_layers) or bridge_trains or
                                         any_trainable(inner.language_model.embed_tokens))
    ckpt = mcfg.chat.gradient_checkpointing
    kv_heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    shape = llama_shape(text_config.hidden_size, text_config.intermediate_size, text_config.num_attention_heads,
                        kv_heads)
    vit_shape_448 = vit_shape(vcfg)
    groups = [transformer_group("ViT layers", vit_shape_448, vision_layers, row.tiles * vision_tokens, e,
                                ckpt or vcfg.gradient_checkpointing),
              transformer_group("LLM layers", shape, llm_layers, row.tokens, e, ckpt, weights_train=llm_trains)]
    image_tokens = row.tiles * int(model.config.image_seq_length)
    bridge_in = 4 * vcfg.hidden_size  # pixel shuffle 0.5: 4 ViT tokens side by side
    extras = {"ViT output (bridge input)": image_tokens * bridge_in * e}
    if bridge_trains or vision_layers:
        extras["bridge (mlp1)"] = image_tokens * (bridge_in + 2 * text_config.hidden_size) * e
    if llm_layers:
        extras["LLM final norm"] = row.tokens * text_config.hidden_size * norm_bytes("rms_norm", e, llm_trains)
        extras["LLM logits"] = logits_bytes(row.tokens, text_config.vocab_size, e)
    fraction = vision_layers / max(len(vit.encoder.layer), 1)
    row_flops = flops.chat_train_flops_per_row(model, row.tiles, row.tokens, row.attention_span, fraction,
                                               llm_trains)
    unit = f"packed row of {row.tokens} tokens" if row.packed else f"conversation of <= {row.tokens} tokens"
    return Workload(unit, f"{row.tokens} LLM tokens incl. {row.tiles} tile(s) x {model.config.image_seq_length} "
                          f"image tokens ({vision_tokens} ViT tokens per tile), attention span {row.attention_span}",
                    ActivationEstimate(groups, extras), row_flops)
