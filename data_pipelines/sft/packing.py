"""Rows of encoded samples -> the SFT micro-batch dict, and the attention helpers the model needs.

A row holds one sample (no packing) or several (packing). Samples in a row never see each other: their
position ids restart at 0 and `sample_ids` tells the model where each one begins, from which it builds
either flash-attn varlen `cu_seqlens` or an SDPA block-diagonal causal mask (both below).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from data_pipelines.sft.encode import EncodedSample
from internvl_train.losses.labels import IGNORE_INDEX
from internvl_train.losses.lm import sample_loss_weights


def collate_rows(rows: Sequence[Sequence[EncodedSample]], pad_id: int, reduction: str,
                 image_size: int) -> dict[str, Any]:
    """Right-padded batch of rows. See docs/sft_data.md for the contract."""
    length = max(sum(len(s.input_ids) for s in row) for row in rows)
    shape = (len(rows), length)
    batch = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "labels": torch.full(shape, IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros(shape, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "sample_ids": torch.full(shape, -1, dtype=torch.long),
        "loss_weights": torch.zeros(shape, dtype=torch.float32),
    }
    pixels, num_tiles = [], []
    for r, row in enumerate(rows):
        pos = 0
        for k, s in enumerate(row):
            n = len(s.input_ids)
            sl = slice(pos, pos + n)
            batch["input_ids"][r, sl] = s.input_ids
            batch["labels"][r, sl] = s.labels
            batch["attention_mask"][r, sl] = 1
            batch["position_ids"][r, sl] = torch.arange(n)
            batch["sample_ids"][r, sl] = k
            batch["loss_weights"][r, sl] = sample_loss_weights(s.labels, reduction)
            pixels.append(s.pixel_values)
            num_tiles += s.num_tiles
            pos += n
    batch["pixel_values"] = torch.cat(pixels) if pixels else torch.zeros(0, 3, image_size, image_size)
    batch["num_tiles"] = torch.tensor(num_tiles, dtype=torch.long)
    batch["num_samples"] = sum(len(row) for row in rows)
    batch["num_supervised_tokens"] = int((batch["labels"] != IGNORE_INDEX).sum())
    return batch


def block_causal_mask(sample_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, L, L] mask, True where query i may attend key j: same sample, j <= i, not padding.
    Padding queries attend to themselves only so no softmax row is empty."""
    same = sample_ids[:, :, None] == sample_ids[:, None, :]
    real = (sample_ids >= 0)[:, None, :]
    length = sample_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=sample_ids.device).tril()
    mask = same & real & causal
    eye = torch.eye(length, dtype=torch.bool, device=sample_ids.device)
    mask = mask | (eye & (sample_ids < 0)[:, :, None])
    return mask[:, None]


def cu_seqlens_from_sample_ids(sample_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens int32, max_seqlen) of the real tokens of all rows laid end to end (row-major, padding
    removed), for flash-attn varlen kernels."""
    lengths = []
    for row in sample_ids:
        ids = row[row >= 0]
        if ids.numel():
            lengths += torch.bincount(ids).tolist()
    lengths = [n for n in lengths if n > 0]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return cu, max(lengths, default=0)
