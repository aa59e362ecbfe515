"""Held-out image-text sets for evaluation: deterministic order, optionally split across ranks, with the
class names and prompt templates of zero-shot classification when the set has them."""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from typing import Any, Iterator, Optional

import torch

from data_pipelines import eval_formats as formats
from data_pipelines.config import DataConfig, EvalSetConfig, expand_urls
from data_pipelines.decode import (IMAGE_EXTENSIONS, Normalize, build_geometry, caption_and_label,
                                   decode_image, image_bytes, to_uint8_tensor)
from data_pipelines.shards import BadSample, read_samples, shard_sample_count
from data_pipelines.skip import SkipSample
from data_pipelines.stream import RateLimitedLog


class PairEvalSet:
    """Iterate for {"pixel_values", "captions", "keys", "labels" (-1 = none)} batches. Image i of the set
    (shards in pattern order, samples in tar order; or CSV rows; a run of consecutive rows sharing a key is
    one image with several captions) belongs to rank i % world_size, with all its caption rows."""

    def __init__(self, cfg: EvalSetConfig, image_size: int, normalization: str, max_image_pixels: int,
                 rank: int = 0, world_size: int = 1, max_aspect_ratio: float = 50.0):
        self.name, self.cfg = cfg.name, cfg
        self.rank, self.world_size = rank, world_size
        self.max_image_pixels, self.max_aspect_ratio = max_image_pixels, max_aspect_ratio
        self.geometry, self.normalize = build_geometry(image_size), Normalize(normalization)
        self.format = formats.resolve_format(cfg)
        self.classnames = _read_lines(cfg.classnames_file) if cfg.classnames_file else \
            formats.named_classnames(cfg.classnames) if cfg.classnames else None
        self.templates = _read_lines(cfg.templates_file) if cfg.templates_file else \
            formats.named_templates(cfg.templates) if cfg.templates else None
        if cfg.templates_file and not all("{}" in t for t in self.templates):
            raise ValueError(f"{cfg.templates_file}: every template needs a {{}} for the class name")
        if self.format == "imagenet_folder":
            self._folders = formats.class_folders(cfg.root)
            self.classnames = formats.folder_classnames(cfg.root, self._folders, self.classnames)
            self.templates = self.templates or formats.named_templates("openai")
        elif self.format in ("karpathy", "coco_captions"):  # parsed (and checked) once, here
            self._rows = formats.karpathy_rows(cfg.annotation, cfg.root, cfg.split) if self.format == "karpathy" \
                else formats.coco_caption_rows(cfg.annotation, cfg.root)
        self.skipped: Counter = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = Counter()
        logger, batch, last = RateLimitedLog(), [], (None, None)
        for index, entry in _image_indices(self._entries()):
            if index % self.world_size != self.rank:
                continue
            try:
                if isinstance(entry, BadSample):
                    raise SkipSample(entry.reason)
                caption, label = caption_and_label(self._with_class_caption(entry))
                path = entry.get("__path__") or entry.get("__image__")  # an image's captions follow each other:
                if path is None or last[0] != path:  # decode it once for all of them
                    image = decode_image(image_bytes(_with_image(entry)), self.max_image_pixels,
                                         max_aspect_ratio=self.max_aspect_ratio)
                    last = (path, to_uint8_tensor(self.geometry(image)))
            except SkipSample as skip:
                self.skipped[skip.reason] += 1
                logger.skipped(getattr(entry, "key", None) or entry.get("__key__"), str(skip))
                continue
            batch.append((last[1], caption, entry["__key__"], label))
            if len(batch) == self.cfg.batch_size:
                yield _collate(batch, self.normalize)
                batch = []
        if batch:
            yield _collate(batch, self.normalize)

    def metrics(self) -> dict[str, float]:
        return {f"data/eval/{self.name}/skipped/{k}": float(v) for k, v in sorted(self.skipped.items())}

    def _entries(self) -> Iterator[Any]:
        if self.format == "shards":
            for url in expand_urls(self.cfg.shards):
                for entry in read_samples(url, 0, shard_sample_count(url)):
                    yield from _caption_rows(entry, url)
        elif self.format == "csv":
            yield from _csv_entries(self.cfg.csv)
        elif self.format == "imagenet_folder":
            yield from formats.imagenet_folder_rows(self.cfg.root, self._folders, self.classnames)
        else:
            yield from self._rows

    def _with_class_caption(self, entry: dict) -> dict:
        """A labelled row without caption (an ImageNet-style CSV image,label) is captioned by its class name."""
        if self.classnames and not (entry.get("txt") or b"").strip() and entry.get("cls") and not entry.get("json"):
            label = int(entry["cls"]) if entry["cls"].strip().isdigit() else -1
            if 0 <= label < len(self.classnames):
                return {**entry, "txt": self.classnames[label].encode()}
        return entry


def _image_indices(entries: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(image index, row): consecutive rows with the same key are one image, so that ranks split the set by
    image and each image's captions stay on one rank (one row per image: the row index, as before)."""
    index, previous = -1, object()
    for entry in entries:
        key = entry.key if isinstance(entry, BadSample) else entry.get("__key__")
        if isinstance(entry, BadSample) or key != previous:
            index += 1
        previous = None if isinstance(entry, BadSample) else key
        yield index, entry


def shard_captions(entry: Any) -> Optional[tuple[list, dict]]:
    """(captions, the rest of the json) for a shard sample whose .json holds several ({"captions": [...]} or
    "caption": [...]), else None (one caption: .txt or the json string, as for training)."""
    if isinstance(entry, BadSample) or not entry.get("json"):
        return None
    try:
        meta = json.loads(entry["json"])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # counted as bad_json when the row is read
    if not isinstance(meta, dict):
        return None
    for name in ("captions", "caption"):
        if isinstance(meta.get(name), list) and meta[name]:
            return meta[name], {k: v for k, v in meta.items() if k not in ("captions", "caption")}
    return None


def _caption_rows(entry: Any, url: str) -> Iterator[Any]:
    """A shard sample with a caption list as one row per caption, sharing its key and image (decoded once);
    the list wins over .txt (a writer may put its first caption there). Non-strings count as missing_caption."""
    found = shard_captions(entry)
    if found is None:
        yield entry
        return
    captions, meta = found
    rest = {k: v for k, v in entry.items() if k != "txt"}
    for caption in captions:  # the json keeps its label
        row = {**rest, "__image__": f"{url}#{entry['__key__']}", "json": json.dumps(meta).encode()}
        if isinstance(caption, str):
            row["txt"] = caption.encode("utf-8", errors="replace")
        yield row


def _with_image(entry: dict) -> dict:
    """A row of a folder / annotation format with its image bytes read from `__path__` (this rank's only)."""
    if "__path__" not in entry:
        return entry
    try:
        with open(entry["__path__"], "rb") as f:
            return {**entry, "jpg": f.read()}
    except OSError:
        raise SkipSample("missing_image", entry["__path__"]) from None


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
