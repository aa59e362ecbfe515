"""Held-out image-text sets for evaluation: deterministic order, optionally split across ranks, with the
class names and prompt templates of zero-shot classification when the set has them."""
from __future__ import annotations

import csv
import os
from collections import Counter
from typing import Any, Iterator, Optional

import torch

from data_pipelines.config import DataConfig, EvalSetConfig, expand_urls
from data_pipelines.decode import (IMAGE_EXTENSIONS, Normalize, SkipSample, build_geometry, caption_and_label,
                                   decode_image, image_bytes, to_uint8_tensor)
from data_pipelines.shards import BadSample, read_samples, shard_sample_count
from data_pipelines.stream import RateLimitedLog


class PairEvalSet:
    """Iterate for {"pixel_values", "captions", "keys", "labels" (-1 = none)} batches. Sample i of the set
    (shards in pattern order, samples in tar order; or CSV rows) belongs to rank i % world_size."""

    def __init__(self, cfg: EvalSetConfig, image_size: int, normalization: str, max_image_pixels: int,
                 rank: int = 0, world_size: int = 1, max_aspect_ratio: float = 50.0):
        self.name, self.cfg = cfg.name, cfg
        self.rank, self.world_size = rank, world_size
        self.max_image_pixels, self.max_aspect_ratio = max_image_pixels, max_aspect_ratio
        self.geometry, self.normalize = build_geometry(image_size), Normalize(normalization)
        self.classnames = _read_lines(cfg.classnames_file) if cfg.classnames_file else None
        self.templates = _read_lines(cfg.templates_file) if cfg.templates_file else None
        if self.templates and not all("{}" in t for t in self.templates):
            raise ValueError(f"{cfg.templates_file}: every template needs a {{}} for the class name")
        self.skipped: Counter = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = Counter()
        logger, batch = RateLimitedLog(), []
        for index, entry in enumerate(self._entries()):
            if index % self.world_size != self.rank:
                continue
            try:
                if isinstance(entry, BadSample):
                    raise SkipSample(entry.reason)
                caption, label = caption_and_label(entry)
                image = decode_image(image_bytes(entry), self.max_image_pixels, max_aspect_ratio=self.max_aspect_ratio)
            except SkipSample as skip:
                self.skipped[skip.reason] += 1
                logger.skipped(getattr(entry, "key", None) or entry.get("__key__"), str(skip))
                continue
            batch.append((to_uint8_tensor(self.geometry(image)), caption, entry["__key__"], label))
            if len(batch) == self.cfg.batch_size:
                yield _collate(batch, self.normalize)
                batch = []
        if batch:
            yield _collate(batch, self.normalize)

    def metrics(self) -> dict[str, float]:
        return {f"data/eval/{self.name}/skipped/{k}": float(v) for k, v in sorted(self.skipped.items())}

    def _entries(self) -> Iterator[Any]:
        if self.cfg.shards:
            for url in expand_urls(self.cfg.shards):
                yield from read_samples(url, 0, shard_sample_count(url))
        else:
            yield from _csv_entries(self.cfg.csv)


def _csv_entries(path: str) -> Iterator[Any]:
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            image = os.path.join(base, row.get("image") or "")
            entry: dict[str, Any] = {"__key__": row.get("image") or "?", "txt": (row.get("caption") or "").encode()}
            ext = os.path.splitext(image)[1].lower().lstrip(".")
            try:
                with open(image, "rb") as img:
                    entry["jpg" if ext not in IMAGE_EXTENSIONS else ext] = img.read()
            except OSError:
                pass  # no image member: counted as missing_image
            if row.get("label") not in (None, ""):
                entry["cls"] = str(row["label"]).encode()
            yield entry


def _collate(batch: list[tuple], normalize: Normalize) -> dict[str, Any]:
    images, captions, keys, labels = zip(*batch)
    return {"pixel_values": normalize(torch.stack(images)), "captions": list(captions), "keys": list(keys),
            "labels": torch.tensor(labels, dtype=torch.long)}


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def build_pair_eval_set(cfg: EvalSetConfig, image_size: int, normalization: str = "imagenet",
                        max_image_pixels: int = 50_000_000, rank: int = 0, world_size: int = 1,
                        max_aspect_ratio: float = 50.0) -> PairEvalSet:
    return PairEvalSet(cfg, image_size, normalization, max_image_pixels, rank, world_size, max_aspect_ratio)


def build_pair_eval_sets(cfg: DataConfig, rank: int = 0, world_size: int = 1,
                         names: Optional[list[str]] = None) -> dict[str, PairEvalSet]:
    """All eval sets of the data config (the demo held-out set when cfg.demo and none is configured)."""
    from data_pipelines.pairs import as_data_config, resolve_demo

    cfg = as_data_config(cfg)
    if cfg.demo:
        cfg = resolve_demo(cfg)
    return {e.name: build_pair_eval_set(e, cfg.image_size, cfg.normalization, cfg.max_image_pixels, rank,
                                        world_size, cfg.max_aspect_ratio)
            for e in cfg.eval_sets if names is None or e.name in names}
