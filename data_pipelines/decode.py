"""Explicit, safe decoding of one raw sample into (image tensor, caption, label), and the image transforms.

Only the members named here are decoded (no webdataset autodecode, never pickle), and only images whose
content is one of ALLOWED_IMAGE_FORMATS: other PIL plugins (EPS/PS would run Ghostscript) are never tried.
Work per image is bounded before any pixel is decoded: at most `max_pixels` pixels and an aspect ratio of at
most `max_aspect_ratio` (so no resize target or intermediate explodes). Every failure raises
SkipSample(reason) with one of SKIP_REASONS, so the caller can count it and carry on.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from data_pipelines.config import AugmentConfig
from data_pipelines.shards import ALLOWED_IMAGE_FORMATS, IMAGE_EXTENSIONS  # noqa: F401  (re-exported)
from data_pipelines.skip import SkipSample

MAX_LABEL = 2**63 - 1  # labels become int64 tensors
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
MEAN_STD = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
SKIP_REASONS = ("missing_image", "corrupt_image", "truncated_image", "oversized_image", "extreme_aspect_ratio",
                "unsupported_image_format", "missing_caption", "empty_caption", "bad_json", "bad_label",
                "pickle_member", "oversized_member", "truncated_tar", "unreadable_shard")


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


def open_image(fp: Any, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    """Open (header only) an image of an allowed format and check its size; nothing is decoded yet.
    `fp`: a path or a binary file object."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(fp, formats=ALLOWED_IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise SkipSample("oversized_image", "PIL's decompression-bomb limit") from None
        except UnidentifiedImageError:
            raise _unidentified(fp) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise SkipSample(_failure_reason(exc), str(exc)) from None
    check_image_size(image.width, image.height, max_pixels, max_aspect_ratio)
    return image


def check_image_size(width: int, height: int, max_pixels: int, max_aspect_ratio: float) -> None:
    """The per-image work bound: pixel count (decompression bombs) and aspect ratio (a 1 x 40000 image
    resized to a 224 short side would need 224 x 9M pixels)."""
    if width < 1 or height < 1:
        raise SkipSample("corrupt_image", f"{width}x{height} pixels")
    if width * height > max_pixels:
        raise SkipSample("oversized_image", f"{width}x{height} > {max_pixels} pixels (max_image_pixels)")
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise SkipSample("extreme_aspect_ratio", f"{width}x{height}: aspect ratio above {max_aspect_ratio:g} "
                                                 "(max_aspect_ratio)")


def _unidentified(fp: Any) -> SkipSample:
    """unsupported_image_format when another PIL plugin recognises the header (EPS, PSD, ...), else corrupt."""
    other = sniff_format(_prefix(fp))
    if other:
        return SkipSample("unsupported_image_format", f"{other} is not one of {ALLOWED_IMAGE_FORMATS}")
    return SkipSample("corrupt_image", "not an image")


def _prefix(fp: Any) -> bytes:
    try:
        if isinstance(fp, (str, bytes, os.PathLike)):
            with open(fp, "rb") as f:
                return f.read(16)
        fp.seek(0)
        return fp.read(16)
    except OSError:
        return b""


def sniff_format(prefix: bytes) -> Optional[str]:
    """The name of a non-allowed PIL format whose header check accepts `prefix` (header bytes only: no
    plugin opens or decodes anything), or None."""
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        if name in ALLOWED_IMAGE_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):  # True, or a message string for a recognised but unbuilt format
                return name
        except Exception:  # a plugin's header check on hostile bytes: not ours to trust
            continue
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Decoded image -> RGB. 16-bit greyscale (PNG I;16, 32-bit I holding 16-bit values) is scaled to
    8 bits (value >> 8; I is clipped to 0..65535 first), not clipped at 255 as PIL's convert does."""
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(data: bytes, max_pixels: int, draft_size: Optional[int] = None,
                 max_aspect_ratio: float = 50.0) -> Image.Image:
    """Bytes -> RGB PIL image. Format, pixel count and aspect ratio are checked from the header, before
    any pixel is decoded."""
    image = open_image(io.BytesIO(data), max_pixels, max_aspect_ratio)
    return load_rgb(image, draft_size)


def load_rgb(image: Image.Image, draft_size: Optional[int] = None) -> Image.Image:
    """Decode an image opened by open_image (JPEGs much larger than `draft_size` at reduced scale)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if draft_size and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))  # DCT-domain downscale: much cheaper decode
        try:
            image.load()
        except OSError as exc:
            raise SkipSample(_failure_reason(exc), str(exc)) from None
        except (ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise SkipSample("corrupt_image", str(exc)) from None
    return to_rgb(image)


def _failure_reason(exc: Exception) -> str:
    truncated = isinstance(exc, OSError) and "truncated" in str(exc).lower()
    return "truncated_image" if truncated else "corrupt_image"


def image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if sample.get(ext):
            return sample[ext]
    raise SkipSample("missing_image")


def caption_and_label(sample: dict) -> tuple[str, int]:
    """Caption from `.txt`, else the "caption" of `.json`; label from `.cls`, else json "label"; -1 = none.
    A `.json` that does not parse (syntax, encoding, nesting too deep) is bad_json; a label that is an
    integer outside 0..2**63-1 (other than -1) is bad_label."""
    meta = _metadata(sample["json"]) if sample.get("json") else {}
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"].encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> ?
    else:
        raise SkipSample("missing_caption")
    if not caption.strip():
        raise SkipSample("empty_caption")
    return caption.strip(), _label(sample, meta)


def _metadata(raw: bytes) -> dict:
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise SkipSample("bad_json", ".json member nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SkipSample("bad_json", f".json member: {exc}") from None
    return meta if isinstance(meta, dict) else {}


def _label(sample: dict, meta: dict) -> int:
    label = meta.get("label", -1)
    if sample.get("cls"):
        try:
            label = int(sample["cls"].decode().strip())
        except (ValueError, UnicodeDecodeError):
            label = -1
    if isinstance(label, bool) or not isinstance(label, int):
        return -1
    if label != -1 and not 0 <= label <= MAX_LABEL:
        raise SkipSample("bad_label", f"label {str(label)[:40]} is outside 0..2**63-1")
    return label
