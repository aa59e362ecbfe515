"""Builders of tiny generated images, records and configs for the data tests."""
from __future__ import annotations

import io
import os

from PIL import Image

from data_pipelines.config import DataConfig, PairSourceConfig
from data_pipelines.write_shards import write_shards


def png_bytes(seed: int, size: int = 16) -> bytes:
    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_records(folder: str, count: int, start: int = 0) -> list[dict]:
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(start, start + count):
        path = os.path.join(folder, f"img{i:05d}.png")
        with open(path, "wb") as f:
            f.write(png_bytes(i))
        records.append({"image": path, "caption": f"caption number {i}", "label": i % 7, "key": f"s{i:05d}"})
    return records


def pair_config(urls: str, **overrides) -> DataConfig:
    cfg = DataConfig(sources=[PairSourceConfig(urls=urls)], image_size=16, num_workers=0, shuffle_buffer=8)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
