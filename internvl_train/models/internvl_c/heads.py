"""CLIP heads of InternVL-C/G: attention pooling (`clip_projector`, `clip_projector2`).

Attribute names follow the official InternVL-14B checkpoint (`norm1_q`, `cross_attn.q`, `cross_attn.q_bias`,
`cross_attn.proj`, ...) so official weights load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PoolingAttention(nn.Module):
    """Multi-head attention of one query over many tokens; q/k/v weights without bias + separate biases."""

    def __init__(self, dim: int, num_heads: int, out_dim: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention pooling width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor) -> torch.Tensor:
        q = self._heads(F.linear(x_q, self.q.weight, self.q_bias))
        k = self._heads(F.linear(x_k, self.k.weight, self.k_bias))
        v = self._heads(F.linear(x_v, self.v.weight, self.v_bias))
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim**-0.5, no mask
        return self.proj(out.transpose(1, 2).flatten(2))


class AttentionPooling(nn.Module):
    """Pool tokens [B, N, D] -> [B, out_dim]: the query is the token mean; LayerNorm(eps 1e-5) on q, k, v."""

    def __init__(self, dim: int, num_heads: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm1_q = nn.LayerNorm(dim, eps=eps)
        self.norm1_k = nn.LayerNorm(dim, eps=eps)
        self.norm1_v = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = PoolingAttention(dim, num_heads, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = tokens.mean(dim=1, keepdim=True)
        out = self.cross_attn(self.norm1_q(query), self.norm1_k(tokens), self.norm1_v(tokens))
        return out.squeeze(1)
