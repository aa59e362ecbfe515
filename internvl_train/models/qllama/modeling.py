"""QLLaMA: transformers' LLaMA with learnable queries in front of the text and cross-attention into the ViT.

The decoder layer subclasses LlamaDecoderLayer (its self-attention, MLP and norms are transformers' own);
only the layer's forward is re-wired to run cross-attention on the query positions between self-attention
and the MLP, as the official InternVL-14B. Parameter names match the official checkpoint
(`model.layers.N.cross_attn.{q_proj,k_proj,v_proj,o_proj,norm1,norm2}`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaPreTrainedModel, LlamaRMSNorm,
                                                      LlamaRotaryEmbedding)

from internvl_train.models.qllama.masks import causal_text_mask


class VisionCrossAttention(nn.Module):
    """Queries attend to all ViT tokens (CLS included): q from RMSNorm(D), k/v from RMSNorm(vision width);
    no RoPE, no mask, no bias; the text tower's head count."""

    def __init__(self, config: LlamaConfig, vision_width: int):
        super().__init__()
        width, self.num_heads = config.hidden_size, config.num_attention_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(vision_width, width, bias=False)
        self.v_proj = nn.Linear(vision_width, width, bias=False)
        self.o_proj = nn.Linear(width, width, bias=False)
        self.norm1 = LlamaRMSNorm(width, eps=config.rms_norm_eps)
        self.norm2 = LlamaRMSNorm(vision_width, eps=config.rms_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, queries: torch.Tensor, vision_states: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q_proj(self.norm1(queries)))
        vision = self.norm2(vision_states.to(queries.dtype))
        k, v = self._heads(self.k_proj(vision)), self._heads(self.v_proj(vision))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class QLlamaDecoderLayer(LlamaDecoderLayer):
    """LlamaDecoderLayer + optional cross-attention on the first `num_queries` positions."""

    def __init__(self, config: LlamaConfig, layer_idx: int, vision_width: int, with_cross_attn: bool):
        super().__init__(config, layer_idx)
        self.cross_attn = VisionCrossAttention(config, vision_width) if with_cross_attn else None

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_embeddings: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                vision_states: Optional[torch.Tensor] = None, num_queries: int = 0,
                **kwargs) -> torch.Tensor:
        residual = hidden_states
        attn_out, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                                     attention_mask=attention_mask, position_embeddings=position_embeddings)
        hidden_states = residual + attn_out
        if self.cross_attn is not None and vision_states is not None and num_queries > 0:
            queries = hidden_states[:, :num_queries]
            queries = queries + self.cross_attn(queries, vision_states)
            hidden_states = torch.cat([queries, hidden_states[:, num_queries:]], dim=1)
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class QLlamaModel(LlamaModel):
    """LlamaModel whose layers are QLlamaDecoderLayer; forward takes a ready 4-D additive mask."""

    def __init__(self, config: LlamaConfig, vision_width: int, cross_attention_every: int):
        LlamaPreTrainedModel.__init__(self, config)  # skip LlamaModel.__init__: it would build plain layers
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([
            QLlamaDecoderLayer(config, idx, vision_width, with_cross_attn=idx % cross_attention_every == 0)
            for idx in range(config.num_hidden_layers)
        ])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, vision_states: Optional[torch.Tensor] = None,
                num_queries: int = 0, **kwargs) -> torch.Tensor:
        """Final-norm hidden states [B, S, D]. `attention_mask`: 4-D additive [B, 1, S, S], or 2-D padding
        mask (then a causal text mask is built). RoPE positions run 0..S-1 over queries and text."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if attention_mask is None or attention_mask.ndim == 2:
            if attention_mask is None:
                attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            attention_mask = causal_text_mask(attention_mask, inputs_embeds.dtype)
        positions = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids=positions)
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=attention_mask, position_embeddings=position_embeddings,
                           vision_states=vision_states, num_queries=num_queries)
        return self.norm(hidden)


class QLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM around QLlamaModel: keys `model.*` and `lm_head.weight` as a stage-1 text tower."""

    def __init__(self, config: LlamaConfig, vision_width: int, cross_attention_every: int):
        LlamaPreTrainedModel.__init__(self, config)
        self.model = QLlamaModel(config, vision_width, cross_attention_every)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def cross_attention_layers(self) -> list[int]:
        return [i for i, layer in enumerate(self.model.layers) if layer.cross_attn is not None]
