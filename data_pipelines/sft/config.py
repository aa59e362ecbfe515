"""Configuration of the stage-3 (SFT) conversation pipeline. No torch import: validation must be fast."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from internvl_train.errors import ConfigError

LOSS_REDUCTIONS = ("token", "sample", "square")
# How held-out VQA answers are scored (internvl_train/eval/vqa.py); here so that validating stays torch-free.
VQA_METRICS = ("exact_match", "vqav2")


@dataclass
class SftDataConfig:
    """Where the conversations come from and how they become packed, tokenised micro-batches.

    Exactly one source: `demo` (the embedded demo conversations), `meta_path` (an InternVL-Chat meta
    JSON) or `llava_json` (a LLaVA JSON list, images under `image_root`). The conversation template and the
    tiling (tile size, min/max tiles, thumbnail, dynamic resolution) are the chat model's (`model.chat`):
    build_sft_loader takes them as arguments.
    """

    demo: bool = False
    meta_path: Optional[str] = None
    llava_json: Optional[str] = None
    image_root: Optional[str] = None
    system_message: Optional[str] = None  # None: the template's default system message
    max_seq_len: int = 4096  # per sample; longer samples lose whole trailing turns
    packing: bool = False
    max_packed_tokens: int = 8192  # per packed row
    max_tiles_per_row: int = 48  # image tiles per row (the ViT batch a row costs); also caps one sample
    loss_reduction: str = "square"  # token | sample | square (1/sqrt(n supervised tokens of the sample))
    max_image_pixels: int = 50_000_000  # decompression-bomb limit, checked from the image header before decoding
    max_aspect_ratio: float = 50.0  # long side / short side above this: skipped (bounds the resize work)
    num_image_token: int = 0  # <IMG_CONTEXT> tokens per tile; 0 = filled from the model
    heldout_vqa: Optional[str] = None  # JSONL of {question, image, answers} for VQA evaluation
    # exact_match: `answers` are alternatives, any one is right; vqav2: they are 10 human answers (consensus)
    heldout_vqa_metric: str = "exact_match"
    heldout_image_root: Optional[str] = None
    num_workers: int = 2  # decoding threads (ordered lookahead; the order never depends on them)
    prefetch: int = 16  # samples decoded ahead of the packer
    max_consecutive_failures: int = 200  # that many skipped samples in a row: stop with the reasons

    def validate(self) -> None:
        sources = [name for name, on in (("demo", self.demo), ("meta_path", self.meta_path),
                                         ("llava_json", self.llava_json)) if on]
        if len(sources) != 1:
            raise ConfigError("", f"set exactly one of demo / meta_path / llava_json (got {sources or 'none'})")
        if self.llava_json and not self.image_root:
            raise ConfigError("image_root", "llava_json needs image_root (folder the image paths are relative to)")
        if self.heldout_vqa_metric not in VQA_METRICS:
            raise ConfigError("heldout_vqa_metric",
                              f"must be one of {VQA_METRICS}, got {self.heldout_vqa_metric!r}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError("loss_reduction", f"must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        for key in ("max_seq_len", "max_packed_tokens", "max_tiles_per_row", "prefetch", "max_consecutive_failures",
                    "max_image_pixels", "max_aspect_ratio"):
            if getattr(self, key) < 1:
                raise ConfigError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.num_image_token < 0 or self.num_workers < 0:
            raise ConfigError("", "num_image_token and num_workers must be >= 0")
        if self.packing and self.max_packed_tokens < self.max_seq_len:
            raise ConfigError("max_packed_tokens",
                              f"must be >= max_seq_len ({self.max_seq_len}) so every sample fits a row")
        self._validate_paths()

    def _validate_paths(self) -> None:
        for key in ("meta_path", "llava_json", "heldout_vqa"):
            path = getattr(self, key)
            if path and not os.path.isfile(path):
                raise ConfigError(key, f"file not found: {path}")
        for key in ("image_root", "heldout_image_root"):
            path = getattr(self, key)
            if path and not os.path.isdir(path):
                raise ConfigError(key, f"folder not found: {path}")
