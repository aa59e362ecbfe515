"""The paper's optional second bridge: QLLaMA query outputs -> MLP -> extra LLM tokens next to the ViT tokens.

Per tile the image block then holds [pixel-shuffled ViT tokens | num_queries query tokens]. The queries are
stage 2's: InternVL-G's learnable queries through QLLaMA with cross-attention into the chat model's own ViT
tokens and no text (InternVLG.query_outputs). Only that path is kept; InternVL-G's towers and heads are not.
"""
from __future__ import annotations

import torch
from torch import nn

from internvl_train.models.internvl_g.modeling import InternVLG
from internvl_train.models.qllama.masks import query_only_mask


class QLlamaQueries(nn.Module):
    """InternVL-G's query path: `query_tokens` + QLLaMA (its text LM head and vision tower left behind)."""

    def __init__(self, model_g: InternVLG):
        super().__init__()
        self.query_tokens = model_g.query_tokens
        self.qllama = model_g.text.model

    @property
    def num_queries(self) -> int:
        return self.query_tokens.shape[1]

    @property
    def width(self) -> int:
        return self.query_tokens.shape[2]

    def forward(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, C_vit) ViT tokens, CLS included -> (N, num_queries, width), as InternVLG.query_outputs."""
        n = vision_tokens.shape[0]
        embeds = self.query_tokens.expand(n, -1, -1)
        mask = query_only_mask(n, self.num_queries, embeds.dtype, vision_tokens.device)
        return self.qllama(inputs_embeds=embeds, attention_mask=mask, vision_states=vision_tokens.to(embeds.dtype),
                           num_queries=self.num_queries)


class QueryBridge(nn.Module):
    """QLLaMA queries + `mlp2` = [LayerNorm(W), Linear(W, D), GELU, Linear(D, D)], the shape of `mlp1`."""

    def __init__(self, queries: QLlamaQueries, llm_width: int):
        super().__init__()
        self.queries = queries
        self.mlp2 = nn.Sequential(nn.LayerNorm(queries.width), nn.Linear(queries.width, llm_width), nn.GELU(),
                                  nn.Linear(llm_width, llm_width))

    @property
    def num_queries(self) -> int:
        return self.queries.num_queries

    def forward(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp2(self.queries(vision_tokens).to(self.mlp2[0].weight.dtype))
