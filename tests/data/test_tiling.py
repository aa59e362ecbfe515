"""Dynamic tiling follows the official InternVL-Chat rules."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.tiling import (IMAGENET_MEAN, IMAGENET_STD, build_tile_transform, choose_grid,
                                   dynamic_preprocess, image_to_tiles, num_tiles_for, tiles_per_image)


@pytest.mark.parametrize("size, grid, n_tiles", [
    ((800, 600), (4, 3), 13), ((1920, 1080), (4, 2), 9), ((300, 200), (3, 2), 7), ((448, 448), (1, 1), 1),
])
def test_facts_examples(size, grid, n_tiles):
    assert choose_grid(*size, 1, 12, 448) == grid
    assert num_tiles_for(*size, 1, 12, 448, use_thumbnail=True) == n_tiles
    tiles = dynamic_preprocess(Image.new("RGB", size), 1, 12, 448, use_thumbnail=True)
    assert len(tiles) == n_tiles and all(t.size == (448, 448) for t in tiles)


def _rederived_grid(w, h, lo, hi, s):
    """Independent formulation: among the grids closest in aspect ratio (official area order), the largest
    one with W*H > 0.5*s^2*area wins; none qualifying -> the first of them."""
    grids = sorted({(c, r) for c in range(1, hi + 1) for r in range(1, hi + 1) if lo <= c * r <= hi},
                   key=lambda g: g[0] * g[1])
    diffs = [abs(w / h - c / r) for c, r in grids]
    ties = [g for g, d in zip(grids, diffs) if d == min(diffs)]
    qualifying = [g for g in ties[1:] if w * h > 0.5 * s * s * g[0] * g[1]]
    return qualifying[-1] if qualifying else ties[0]


def test_brute_force_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(x) for x in rng.integers(8, 4000, 2)) for _ in range(1500)]
    sizes += [(a * 112, b * 112) for a, b in itertools.product(range(1, 13), repeat=2)]  # exact ratio ties
    for (w, h), (lo, hi) in itertools.product(sizes, [(1, 12), (1, 6), (2, 9), (1, 1)]):
        assert choose_grid(w, h, lo, hi, 448) == _rederived_grid(w, h, lo, hi, 448), (w, h, lo, hi)


def test_tiles_are_row_major_crops_and_thumbnail_last():
    # Pixel value encodes the original coordinate, so each tile's content identifies its crop.
    w, h, s = 60, 40, 20  # -> 3x2 grid of 20px tiles, no resize needed
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = (np.arange(w) * 4)[None, :]
    arr[..., 1] = (np.arange(h) * 6)[:, None]
    image = Image.fromarray(arr)
    tiles = dynamic_preprocess(image, 1, 12, s, use_thumbnail=True)
    assert choose_grid(w, h, 1, 12, s) == (3, 2) and len(tiles) == 7
    for k, tile in enumerate(tiles[:6]):
        r, c = divmod(k, 3)
        assert np.array_equal(np.asarray(tile), arr[r * s:(r + 1) * s, c * s:(c + 1) * s])
    assert np.array_equal(np.asarray(tiles[-1]), np.asarray(image.resize((s, s))))
    assert len(dynamic_preprocess(image, 1, 12, s, use_thumbnail=False)) == 6


def test_multi_image_budget():
    assert tiles_per_image(12, 1) == 12 and tiles_per_image(12, 5) == 2 and tiles_per_image(12, 30) == 1


def test_transform_is_rgb_resize_imagenet_normalised():
    tf = build_tile_transform(28)
    out = tf(Image.new("L", (50, 30), 255))
    assert out.shape == (3, 28, 28)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 5, 5], expected, atol=1e-5)
    pv = image_to_tiles(Image.new("RGB", (90, 30)), tf, 1, 6, 28, use_thumbnail=True)
    assert pv.shape == (4, 3, 28, 28)  # 3x1 grid + thumbnail
