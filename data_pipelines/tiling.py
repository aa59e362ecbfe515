"""InternVL-Chat dynamic-resolution tiling and the per-tile transform.

The rules follow the official `dynamic_preprocess` (see FACTS.md): candidate grids (cols, rows) with
min <= cols*rows <= max sorted by area, the grid whose aspect ratio is closest to the image's wins, a tie
is broken in favour of the later (larger) grid only when the image has more than half the pixels of that
grid; the image is resized to (size*cols, size*rows), cropped row-major, and a size x size thumbnail of the
whole image is appended last when there is more than one tile.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_tiles <= cols*rows <= max_tiles, sorted by area."""
    grids = {
        (cols, rows)
        for n in range(min_tiles, max_tiles + 1)
        for cols in range(1, n + 1)
        for rows in range(1, n + 1)
        if min_tiles <= cols * rows <= max_tiles
    }
    # Same construction and stable area sort as the official code, so equal-area ties (only possible
    # when two grids are equally far from the image's ratio) resolve in the same order.
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, min_tiles: int = 1, max_tiles: int = 12,
                image_size: int = 448) -> tuple[int, int]:
    """The (cols, rows) grid InternVL-Chat uses for a width x height image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles}, {max_tiles}")
    aspect = width / height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def num_tiles_for(width: int, height: int, min_tiles: int, max_tiles: int, image_size: int,
                  use_thumbnail: bool) -> int:
    """How many tiles `dynamic_preprocess` returns, without touching pixels."""
    cols, rows = choose_grid(width, height, min_tiles, max_tiles, image_size)
    n = cols * rows
    return n + 1 if use_thumbnail and n > 1 else n


def dynamic_preprocess(image: Image.Image, min_tiles: int = 1, max_tiles: int = 12,
                       image_size: int = 448, use_thumbnail: bool = True) -> list[Image.Image]:
    """Split an image into image_size x image_size tiles (row-major), thumbnail last when > 1 tile."""
    cols, rows = choose_grid(image.width, image.height, min_tiles, max_tiles, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = []
    for r in range(rows):
        for c in range(cols):
            box = (c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size)
            tiles.append(resized.crop(box))
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def tiles_per_image(max_tiles: int, num_images: int) -> int:
    """Tile budget of each image in a multi-image sample."""
    return max(1, max_tiles // max(1, num_images))


def build_tile_transform(image_size: int) -> T.Compose:
    """RGB, bicubic resize to (image_size, image_size), ImageNet normalisation."""
    return T.Compose([
        T.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
        T.Resize((image_size, image_size), interpolation=InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def image_to_tiles(image: Image.Image, transform: T.Compose, min_tiles: int, max_tiles: int,
                   image_size: int, use_thumbnail: bool, dynamic: bool = True) -> torch.Tensor:
    """pixel_values [n_tiles, 3, image_size, image_size] for one image."""
    image = image.convert("RGB")
    tiles = dynamic_preprocess(image, min_tiles, max_tiles, image_size, use_thumbnail) if dynamic else [image]
    return torch.stack([transform(t) for t in tiles])
