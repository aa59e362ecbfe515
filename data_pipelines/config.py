"""Configuration of the image-text data (schema `/schema/data`). No torch import: validation must be fast."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from data_pipelines.sft.config import SftDataConfig
from internvl_train.errors import ConfigError, qualified

NORMALIZATIONS = ("imagenet", "clip")
REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://", "ais://")


@dataclass
class PairSourceConfig:
    """One set of webdataset shards: `urls` is a brace pattern (`dir/shard-{000000..000099}.tar`),
    several patterns joined by `::`, or a `pipe:` command. `weight` matters only with `resampled`."""

    urls: str = "???"
    weight: float = 1.0


@dataclass
class AugmentConfig:
    """Training-time augmentation (evaluation always resizes + centre-crops)."""

    random_resized_crop: bool = False
    scale_min: float = 0.9  # RandomResizedCrop area range
    scale_max: float = 1.0
    hflip: bool = False  # off by default: captions may say "left"/"right"


@dataclass
class EvalSetConfig:
    """A held-out set: webdataset shards or a CSV of image,caption[,label] (paths relative to the CSV).
    `classnames_file` (one class per line, line i = label i) and `templates_file` (one prompt per line
    with `{}` for the class name) enable zero-shot classification."""

    name: str = "???"
    shards: Optional[str] = None
    csv: Optional[str] = None
    classnames_file: Optional[str] = None
    templates_file: Optional[str] = None
    batch_size: int = 64
    # Public layouts (docs/evaluation.md, data_pipelines/eval_formats.py): format = csv | shards |
    # imagenet_folder (root = val/ with one folder per class) | karpathy (annotation = dataset_*.json,
    # root = image folder, split) | coco_captions (annotation = captions_*.json, root); None = csv/shards.
    format: Optional[str] = None
    root: Optional[str] = None
    annotation: Optional[str] = None
    split: str = "test"
    classnames: Optional[str] = None  # a built-in class-name list instead of classnames_file: imagenet
    templates: Optional[str] = None  # built-in prompts instead of templates_file: openai | simple


@dataclass
class DataConfig:
    """Image-text pairs for stages 1 and 2 (+ the SFT conversations of stage 3 under `sft`).

    `demo: true` uses the embedded synthetic demo data (generated on first use, cached) for training and
    evaluation; otherwise `sources` lists the training shards. Epoch mode (`resampled: false`) sees every
    sample once per epoch; resampled mode draws shards with replacement by source weight, endlessly.
    """

    demo: bool = False
    sources: List[PairSourceConfig] = field(default_factory=list)
    resampled: bool = False
    shuffle_buffer: int = 1000  # samples shuffled together (one read chunk per worker)
    image_size: int = 224
    normalization: str = "imagenet"  # imagenet | clip
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 2
    prefetch_factor: int = 2
    max_image_pixels: int = 50_000_000  # decompression-bomb limit, checked from the header before decoding
    max_aspect_ratio: float = 50.0  # long side / short side above this: skipped (bounds the resize work)
    eval_sets: List[EvalSetConfig] = field(default_factory=list)
    sft: SftDataConfig = field(default_factory=SftDataConfig)

    def validate(self) -> None:
        """Checks of this node that hold for every stage (stage 3 has no pair sources)."""
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError("normalization", f"{self.normalization!r} is not one of {NORMALIZATIONS}")
        for key in ("image_size", "shuffle_buffer", "max_image_pixels", "prefetch_factor"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {self.num_workers}")
        if not self.max_aspect_ratio >= 1:
            raise ConfigError("max_aspect_ratio", f"must be >= 1, got {self.max_aspect_ratio}")
        if not 0 < self.augment.scale_min <= self.augment.scale_max <= 1:
            raise ConfigError("augment", "need 0 < scale_min <= scale_max <= 1")

    def validate_pair_sources(self, training: bool = True) -> None:
        """What stages 1 and 2 need: training shards that exist (or the demo) and readable eval sets; an
        evaluation-only run (`training=False`) needs eval sets and never reads the training shards. Keys are
        relative to this node: the stage's validate_run qualifies them with `data`."""
        if self.demo and self.sources:
            raise ConfigError("sources", "demo: true uses the embedded demo shards; set demo: false "
                              "to train on your own sources")
        if not training and not self.demo and not self.eval_sets:
            raise ConfigError("eval_sets", "mode=eval with no eval set: set data.eval_sets=[{name: ..., "
                                           "shards: ...}] (or csv: ...), or data=demo")
        if training and not self.demo and not self.sources:
            raise ConfigError("sources", "no training shards: set data.sources=[{urls: ...}] or data=demo")
        for i, source in enumerate(self.sources if training else []):
            with qualified(f"sources[{i}]"):
                _validate_source(source, self.resampled)
        for i, eval_set in enumerate(self.eval_sets):
            with qualified(f"eval_sets[{i}]"):
                validate_eval_set(eval_set)


def expand_urls(urls: str) -> list[str]:
    """Brace-expand a shard pattern; `::` separates several patterns (webdataset convention)."""
    import braceexpand

    out: list[str] = []
    for part in urls.split("::"):
        out.extend(braceexpand.braceexpand(part.strip()))
    return out


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def _validate_source(source: PairSourceConfig, resampled: bool) -> None:
    """Checks of one training source; keys relative to it."""
    if not source.urls or source.urls == "???":
        raise ConfigError("urls", "required: a brace pattern of .tar shards or a pipe: command")
    if source.weight <= 0:
        raise ConfigError("weight", f"must be > 0, got {source.weight}")
    if source.weight != 1.0 and not resampled:
        raise ConfigError("weight", "weights mix sources only with data.resampled=true "
                          "(epoch mode reads every sample exactly once)")
    shards = expand_urls(source.urls)
    if not resampled and any(is_remote(u) for u in shards):
        missing_stats = [u for u in shards if is_remote(u)]
        raise ConfigError("urls", f"epoch mode needs per-shard sample counts, which remote shards "
                          f"({missing_stats[0]}) cannot provide: use data.resampled=true or local shards")
    missing = [u for u in shards if not is_remote(u) and not os.path.isfile(u)]
    if missing:
        raise ConfigError("urls", f"{len(missing)} of {len(shards)} shards do not exist, first: "
                          f"{missing[0]} (check the path and the brace range)")


def validate_eval_set(eval_set: EvalSetConfig) -> None:
    """Checks of one eval set; keys relative to it (the caller qualifies them, e.g. `eval_sets[0]`)."""
    from data_pipelines.eval_formats import CLASSNAME_SETS, FORMATS, TEMPLATE_SETS
    fmt = eval_set.format
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError("format", f"{fmt!r} is not one of {FORMATS}")
    if fmt is None and (eval_set.shards is None) == (eval_set.csv is None):
        raise ConfigError("", "set exactly one of shards / csv (or a format: with its root / annotation)")
    for name in {"csv": ["csv"], "shards": ["shards"], "imagenet_folder": ["root"],
                 "karpathy": ["annotation", "root"], "coco_captions": ["annotation", "root"]}.get(fmt, []):
        if getattr(eval_set, name) is None:
            raise ConfigError(name, f"format {fmt} needs {name}")
    paths = expand_urls(eval_set.shards) if eval_set.shards else [eval_set.csv] if eval_set.csv else []
    paths += [p for p in (eval_set.annotation, eval_set.classnames_file, eval_set.templates_file) if p]
    for path in paths:
        if not is_remote(path) and not os.path.isfile(path):
            raise ConfigError("", f"file not found: {path}")
    if eval_set.root is not None and not os.path.isdir(eval_set.root):
        raise ConfigError("root", f"directory not found: {eval_set.root}")
    if eval_set.classnames is not None and eval_set.classnames not in CLASSNAME_SETS:
        raise ConfigError("classnames", f"{eval_set.classnames!r} is not one of {CLASSNAME_SETS}")
    if eval_set.templates is not None and eval_set.templates not in TEMPLATE_SETS:
        raise ConfigError("templates", f"{eval_set.templates!r} is not one of {TEMPLATE_SETS}")
    if eval_set.classnames and eval_set.classnames_file:
        raise ConfigError("", "set classnames (a built-in list) or classnames_file, not both")
    if eval_set.templates and eval_set.templates_file:
        raise ConfigError("", "set templates (built-in prompts) or templates_file, not both")
    has_classes = bool(eval_set.classnames_file or eval_set.classnames or fmt == "imagenet_folder")
    if eval_set.classnames_file and not (eval_set.templates_file or eval_set.templates):
        raise ConfigError("", "zero-shot needs both classnames_file and templates_file (or templates: openai)")
    if (eval_set.templates_file or eval_set.templates) and not has_classes:
        raise ConfigError("", "templates without class names: set classnames_file (or classnames: imagenet)")
    if eval_set.batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {eval_set.batch_size}")
