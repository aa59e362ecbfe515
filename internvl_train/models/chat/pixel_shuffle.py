"""Pixel shuffle of InternVL-Chat: merge k x k neighbouring ViT tokens into one token (k = 1/downsample_ratio).

Output token (i, j) is the concatenation of the C-wide blocks of its k x k window in row-major order; for
k = 2: [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)]. ps_version "v2" lays the output grid out row-major
(what transformers' InternVLModel.pixel_shuffle does); "v1" (early official chat models) transposes the grid,
so the flattened tokens come column-major. Same channel layout in both: the projector weights are shared.
"""
from __future__ import annotations

import torch


def pixel_shuffle(features: torch.Tensor, downsample_ratio: float, ps_version: str) -> torch.Tensor:
    """(N, H, W, C) -> (N, H/k, W/k, C*k*k) in v2 layout, (N, W/k, H/k, C*k*k) in v1 layout."""
    if ps_version not in ("v1", "v2"):
        raise ValueError(f"ps_version must be 'v1' or 'v2', got {ps_version!r}")
    k = round(1 / downsample_ratio)
    n, h, w, c = features.shape
    if h % k or w % k:
        raise ValueError(f"token grid {h}x{w} is not divisible by the pixel-shuffle factor {k}")
    windows = features.reshape(n, h // k, k, w // k, k, c).permute(0, 1, 3, 2, 4, 5)
    shuffled = windows.reshape(n, h // k, w // k, k * k * c)
    if ps_version == "v1":
        shuffled = shuffled.transpose(1, 2)
    return shuffled.contiguous()


def num_image_token(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    """LLM tokens per image tile: (image_size / patch)^2 * ratio^2 (256 for 448 px, patch 14, ratio 0.5)."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    grid = image_size // patch_size
    k = round(1 / downsample_ratio)
    if grid % k:
        raise ValueError(f"patch grid {grid} is not divisible by the pixel-shuffle factor {k}")
    return (grid // k) ** 2
