"""Builders of tiny generated images, records and configs for the data tests."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image
from webdataset import TarWriter

from data_pipelines.config import DataConfig, PairSourceConfig


def png_bytes(seed: int, size: int = 16) -> bytes:
    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_of(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# A real (tiny) Encapsulated PostScript file: PIL's EPS plugin would render it by running Ghostscript.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
       b"newpath 0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")


def gradient_16bit() -> tuple[bytes, "np.ndarray"]:
    """A 16-bit greyscale PNG (mode I;16) whose values are v * 257 for v = 0..255 (16 rows): the high byte
    is v, returned as the expected 8-bit image."""
    values = np.tile(np.arange(256, dtype=np.uint16), (16, 1))
    return png_of(Image.fromarray(values * 257)), values.astype(np.uint8)


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


def write_shard(path: str, samples: list[dict]) -> None:
    """A raw tar shard of `samples` (members written as given) and the per-shard count the loader reads."""
    with TarWriter(path, encoder=False) as sink:
        for s in samples:
            sink.write(s)
    with open(path[:-4] + "_stats.json", "w") as f:
        json.dump({"successes": len(samples)}, f)
