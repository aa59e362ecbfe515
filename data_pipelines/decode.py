"""Explicit, safe decoding of one raw sample into (image tensor, caption, label), and the image transforms.

Only the members named here are decoded (no webdataset autodecode, never pickle). Every failure raises
SkipSample(reason) with one of SKIP_REASONS, so the caller can count it and carry on.
"""
from __future__ import annotations

import io
import json
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from data_pipelines.config import AugmentConfig

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MEAN_STD = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
SKIP_REASONS = ("missing_image", "corrupt_image", "truncated_image", "oversized_image", "missing_caption",
                "empty_caption", "pickle_member", "truncated_tar", "unreadable_shard")


class SkipSample(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def build_geometry(image_size: int, augment: Optional[AugmentConfig] = None,
                   train: bool = False) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL at image_size x image_size: bicubic resize + centre crop (like InternVL), or with
    `augment` in training a random resized crop and/or a horizontal flip."""
    bicubic = T.InterpolationMode.BICUBIC
    if train and augment is not None and augment.random_resized_crop:
        steps = [T.RandomResizedCrop(image_size, scale=(augment.scale_min, augment.scale_max),
                                     interpolation=bicubic)]
    else:
        steps = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    if train and augment is not None and augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W] (no float pass per image; normalised per batch)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class Normalize:
    """uint8 [..., 3, H, W] -> float (x/255 - mean)/std in one fused pass over a whole batch."""

    def __init__(self, normalization: str):
        mean, std = MEAN_STD[normalization]
        self.shift = torch.tensor(mean).view(3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(std).view(3, 1, 1) * 255)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().sub_(self.shift).mul_(self.scale)


def build_image_transform(image_size: int, normalization: str, augment: Optional[AugmentConfig] = None,
                          train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised FloatTensor[3, image_size, image_size], for single images."""
    geometry, normalize = build_geometry(image_size, augment, train), Normalize(normalization)
    return lambda image: normalize(to_uint8_tensor(geometry(image)))


def decode_image(data: bytes, max_pixels: int, draft_size: Optional[int] = None) -> Image.Image:
    """Bytes -> RGB PIL image. The pixel limit is checked from the header, before any pixel is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise SkipSample("oversized_image") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise SkipSample(_failure_reason(exc)) from None
        width, height = image.size
        if width * height > max_pixels:
            raise SkipSample("oversized_image")
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))  # DCT-domain downscale: much cheaper decode
        try:
            image.load()
        except OSError as exc:
            raise SkipSample(_failure_reason(exc)) from None
        except (ValueError, SyntaxError, Image.DecompressionBombError):
            raise SkipSample("corrupt_image") from None
    return image.convert("RGB")


def _failure_reason(exc: Exception) -> str:
    truncated = isinstance(exc, OSError) and "truncated" in str(exc).lower()
    return "truncated_image" if truncated else "corrupt_image"


def image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if sample.get(ext):
            return sample[ext]
    raise SkipSample("missing_image")


def caption_and_label(sample: dict) -> tuple[str, int]:
    """Caption from `.txt`, else the "caption" of `.json`; label from `.cls`, else json "label"; -1 = none."""
    meta = {}
    if sample.get("json"):
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    else:
        raise SkipSample("missing_caption")
    if not caption.strip():
        raise SkipSample("empty_caption")
    label = meta.get("label", -1)
    if sample.get("cls"):
        try:
            label = int(sample["cls"].decode().strip())
        except (ValueError, UnicodeDecodeError):
            label = -1
    return caption.strip(), label if isinstance(label, int) else -1
