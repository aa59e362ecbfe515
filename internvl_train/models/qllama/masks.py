"""Additive 4-D attention masks over [queries | text] for QLLaMA's three stage-2 passes (as InternVL-14B).

  itm: everything sees everything (text padding masked)
  itc: queries see queries only; text is causal over text and sees no queries
  itg: queries see queries only; text is causal over text and sees all queries
Masked entries hold finfo(dtype).min (not -inf), so a row with nothing visible stays finite.
"""
from __future__ import annotations

import torch

PASSES = ("itm", "itc", "itg")


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min).unsqueeze(1)


def causal_text_mask(text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] padding mask (1 = token) -> [B, 1, T, T] causal additive mask with padded keys masked."""
    t = text_mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=text_mask.device).tril()
    return _additive(causal.unsqueeze(0) & text_mask.bool()[:, None, :], dtype)


def stage2_attention_mask(kind: str, text_mask: torch.Tensor, num_queries: int,
                          dtype: torch.dtype) -> torch.Tensor:
    """[B, T] text padding mask -> [B, 1, Q+T, Q+T] additive mask for pass `kind` (itm | itc | itg)."""
    if kind not in PASSES:
        raise ValueError(f"unknown QLLaMA pass {kind!r}; expected one of {PASSES}")
    b, t = text_mask.shape
    q, device = num_queries, text_mask.device
    key_valid = torch.cat([torch.ones(b, q, dtype=torch.bool, device=device), text_mask.bool()], dim=1)
    allowed = key_valid[:, None, :].expand(b, q + t, q + t).clone()
    if kind != "itm":
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        allowed[:, :q, q:] = False  # queries never see text
        allowed[:, q:, q:] &= causal
        if kind == "itc":
            allowed[:, q:, :q] = False  # text does not see the queries
    return _additive(allowed, dtype)


def query_only_mask(batch: int, num_queries: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[B, 1, Q, Q] all-visible mask for the queries alone (InternVL-G image embedding)."""
    return torch.zeros(batch, 1, num_queries, num_queries, dtype=dtype, device=device)
