"""One conversation record -> input_ids, labels and image tiles, with every step verified.

The whole rendered conversation is tokenised once (what the model sees at inference), each `<image>`
standing for `<img><IMG_CONTEXT></img>`; labels come from character offsets of the supervised pieces, then
each supervised span is decoded and compared with the text it should be. The single `<IMG_CONTEXT>` of each
image is expanded to num_image_token x tiles ids afterwards, so the image-token count is right by
construction. Anything that does not check out raises SkipSample / TemplateMismatch with a counter key.
"""
from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Optional

import torch
from PIL import Image

from data_pipelines import decode
from data_pipelines.skip import SkipSample
from data_pipelines.sft.source import DatasetSpec
from data_pipelines.sft.templates import (TEMPLATES, TOKENIZER_TEMPLATE, Piece, TemplateMismatch,
                                          render_with_chat_template)
from data_pipelines.tiling import build_tile_transform, image_to_tiles, num_tiles_for, tiles_per_image
from internvl_train.losses.labels import IGNORE_INDEX
from internvl_train.models.chat.tokens import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, image_token_ids

IMAGE_PLACEHOLDER = "<image>"
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


@dataclass
class EncodedSample:
    input_ids: torch.Tensor  # [n] long
    labels: torch.Tensor  # [n] long, IGNORE_INDEX where not supervised
    pixel_values: torch.Tensor  # [tiles, 3, S, S] (tiles may be 0)
    num_tiles: list[int]  # per image, in order of their <img> blocks
    truncated: bool

    @property
    def num_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class EncoderSettings:
    template: str
    system_message: Optional[str]
    num_image_token: int
    image_size: int
    min_tiles: int
    max_tiles: int
    use_thumbnail: bool
    dynamic: bool
    max_seq_len: int
    max_tiles_per_sample: int
    max_image_pixels: int = 50_000_000  # checked from the image file's header before decoding
    max_aspect_ratio: float = 50.0  # long side / short side above this: skipped (bounds the resize work)


def parse_turns(record: dict[str, Any]) -> tuple[Optional[str], list[tuple[str, str]]]:
    """(system message or None, alternating human/gpt turns); a trailing unanswered human turn is dropped.
    Wrong JSON types (conversations not a list of {from, value} objects, a value that is not a string or
    holds an unpaired surrogate) are bad_conversation."""
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise SkipSample("bad_conversation", "conversations must be a non-empty list of {from, value} objects")
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or not _is_text(turn.get("value")):
            raise SkipSample("bad_conversation", f"turn {i} must be an object whose value is a UTF-8 string")
    system = None
    if convs[0].get("from") == "system":
        system, convs = convs[0]["value"], convs[1:]
    turns = []
    for i, turn in enumerate(convs):
        role = _ROLES.get(str(turn.get("from")))
        if role != ("human" if i % 2 == 0 else "gpt"):
            raise SkipSample("bad_conversation", f"turn {i} must be {'human' if i % 2 == 0 else 'gpt'} text")
        turns.append((role, turn["value"]))
    if len(turns) % 2:
        turns.pop()
    if not turns:
        raise SkipSample("bad_conversation", "no answered human turn")
    return system, turns


def _is_text(value: Any) -> bool:
    """A str the tokenizer accepts (JSON may carry unpaired surrogates such as "\\ud800": not UTF-8)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def place_image_tokens(turns: list[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
    """Check/insert `<image>` placeholders (one per image, human turns only) and swap in `<img>` blocks."""
    if any(IMAGE_PLACEHOLDER in text for role, text in turns if role == "gpt"):
        raise SkipSample("image_placeholder_mismatch", "<image> in an assistant turn")
    count = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    if count == 0 and num_images:
        prefix = (IMAGE_PLACEHOLDER + "\n" if num_images == 1 else
                  "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(num_images)))
        turns = [(turns[0][0], prefix + turns[0][1]), *turns[1:]]
    elif count != num_images:
        raise SkipSample("image_placeholder_mismatch", f"{count} <image> for {num_images} images")
    block = IMG_START_TOKEN + IMG_CONTEXT_TOKEN + IMG_END_TOKEN
    return [(role, text.replace(IMAGE_PLACEHOLDER, block)) for role, text in turns]


@dataclass(frozen=True)
class ImageRef:
    """An image file whose header passed the checks; decoded only if its exchange is kept."""

    path: str
    width: int
    height: int


_IMAGE_REASONS = {"corrupt_image": "bad_image", "truncated_image": "bad_image"}  # SFT's historical name


def image_paths(record: dict[str, Any]) -> list[str]:
    """The record's `image`: absent/None, a path, or a list of paths; anything else is bad_record."""
    paths = record.get("image")
    if paths is None:
        return []
    if isinstance(paths, str):
        return [paths]
    if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
        return paths
    raise SkipSample("bad_record", f"image must be a path or a list of paths, got {type(paths).__name__}")


def load_images(record: dict[str, Any], spec: DatasetSpec, max_pixels: int = 50_000_000,
                max_aspect_ratio: float = 50.0) -> list[ImageRef]:
    """Open each image's header (allowed formats only), check pixel count and aspect ratio; no pixel
    is decoded here."""
    refs = []
    for p in image_paths(record):
        path = os.path.join(spec.root, p)
        try:
            with decode.open_image(path, max_pixels, max_aspect_ratio) as im:
                refs.append(ImageRef(path, im.width, im.height))
        except SkipSample as e:
            raise _image_skip(p, e) from None
    return refs


def decode_image_file(ref: ImageRef, max_pixels: int, max_aspect_ratio: float) -> Image.Image:
    """The RGB pixels of a checked image (checked again: the file may have changed since)."""
    try:
        with open(ref.path, "rb") as f:  # our handle: closing it leaves the decoded image intact
            return decode.load_rgb(decode.open_image(f, max_pixels, max_aspect_ratio))
    except OSError as e:
        raise SkipSample("bad_image", f"{ref.path}: {e}") from None
    except SkipSample as e:
        raise _image_skip(ref.path, e) from None


def _image_skip(path: str, e: SkipSample) -> SkipSample:
    return SkipSample(_IMAGE_REASONS.get(e.reason, e.reason), f"{path}: {e}")


class ConversationEncoder:
    def __init__(self, tokenizer: Any, settings: EncoderSettings):
        if settings.template != TOKENIZER_TEMPLATE and settings.template not in TEMPLATES:
            raise ValueError(f"unknown SFT template {settings.template!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the SFT pipeline needs a fast tokenizer (character offsets); load it with use_fast=True")
        self.tok, self.s = tokenizer, settings
        self.template = TEMPLATES.get(settings.template)
        self.img_start, self.img_end, self.img_context = image_token_ids(tokenizer)
        self.transform = build_tile_transform(settings.image_size)
        self.bos = self._bos_id()
        self.bad_markers = [m for m in (self.template.markers if self.template else ())
                            if len(tokenizer.encode(m, add_special_tokens=False)) != 1]

    def _bos_id(self) -> Optional[int]:
        bos = self.tok.bos_token_id
        add = self.template.add_bos if self.template else False
        if add is None:
            probe = self.tok("a")["input_ids"]
            add = bool(probe) and probe[0] == bos
        return bos if add and bos is not None else None

    def render(self, system: Optional[str], turns: list[tuple[str, str]]) -> list[Piece]:
        system = system if system is not None else self.s.system_message
        if self.template is not None:
            return self.template.render(turns, system)
        if not getattr(self.tok, "chat_template", None):
            raise TemplateMismatch("no_chat_template", "template=tokenizer but the tokenizer has no chat_template")
        def apply(messages: list[dict[str, Any]]) -> str:
            try:
                return self.tok.apply_chat_template(messages, tokenize=False)
            except Exception as e:  # jinja raises whatever the template author chose (e.g. role checks)
                raise TemplateMismatch("chat_template_error", f"{type(e).__name__}: {e}") from e

        return render_with_chat_template(apply, turns, system)

    def encode(self, record: dict[str, Any], spec: DatasetSpec) -> EncodedSample:
        if self.bad_markers:
            raise TemplateMismatch("marker_not_single_token", f"{self.bad_markers} are not single tokens")
        if not isinstance(record, dict):
            raise SkipSample("bad_record", "not a JSON object")
        system, turns = parse_turns(record)
        images = load_images(record, spec, self.s.max_image_pixels, self.s.max_aspect_ratio)
        turns = place_image_tokens(turns, len(images))
        tiles = self._tiles_per_image(images, spec)
        pieces = self.render(system, turns)
        text = "".join(p.text for p in pieces)
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        labels = self._labels(pieces, ids, offsets)
        self._check_image_blocks(ids, len(images))
        keep = self._exchanges_that_fit(pieces, ids, offsets, tiles)
        self._verify_supervised(pieces, ids, labels, keep)
        cut = self._exchange_start(pieces, offsets, keep, len(ids))
        n_kept_images = sum(1 for t in ids[:cut] if t == self.img_context)
        input_ids, label_ids = self._expand(ids[:cut], labels[:cut], tiles)
        pixels = [self._tiles(im, tiles[i], len(images), spec) for i, im in enumerate(images[:n_kept_images])]
        pixel_values = torch.cat(pixels) if pixels else torch.zeros(0, 3, self.s.image_size, self.s.image_size)
        n_exchanges = max(p.turn for p in pieces) + 1
        return EncodedSample(torch.tensor(input_ids), torch.tensor(label_ids), pixel_values,
                             tiles[:n_kept_images], truncated=keep < n_exchanges)

    # ---- images ------------------------------------------------------------------------------
    def _max_tiles(self, spec: DatasetSpec, num_images: int) -> int:
        return tiles_per_image(spec.max_dynamic_patch or self.s.max_tiles, num_images)

    def _tiles_per_image(self, images: list[ImageRef], spec: DatasetSpec) -> list[int]:
        if not self.s.dynamic:
            return [1] * len(images)
        hi = self._max_tiles(spec, len(images))
        lo = min(self.s.min_tiles, hi)
        return [num_tiles_for(im.width, im.height, lo, hi, self.s.image_size, self.s.use_thumbnail) for im in images]

    def _tiles(self, ref: ImageRef, planned: int, num_images: int, spec: DatasetSpec) -> torch.Tensor:
        hi = self._max_tiles(spec, num_images)
        image = decode_image_file(ref, self.s.max_image_pixels, self.s.max_aspect_ratio)
        out = image_to_tiles(image, self.transform, min(self.s.min_tiles, hi), hi, self.s.image_size,
                             self.s.use_thumbnail, dynamic=self.s.dynamic)
        assert out.shape[0] == planned, "tile count differs from the planned count"
        return out

    def _check_image_blocks(self, ids: list[int], num_images: int) -> None:
        where = [k for k, t in enumerate(ids) if t == self.img_context]
        framed = all(0 < k < len(ids) - 1 and ids[k - 1] == self.img_start and ids[k + 1] == self.img_end for k in where)
        if len(where) != num_images or not framed:
            raise SkipSample("image_token_mismatch", f"{len(where)} image blocks for {num_images} images")

    def _expand(self, ids: list[int], labels: list[int], tiles: list[int]) -> tuple[list[int], list[int]]:
        out_ids = [self.bos] if self.bos is not None else []
        out_labels = [IGNORE_INDEX] * len(out_ids)
        image = 0
        for t, lab in zip(ids, labels):
            if t == self.img_context:
                n = self.s.num_image_token * tiles[image]
                out_ids += [t] * n
                out_labels += [IGNORE_INDEX] * n
                image += 1
            else:
                out_ids.append(t)
                out_labels.append(lab)
        return out_ids, out_labels

    # ---- labels, truncation, verification ------------------------------------------------------
    def _labels(self, pieces: list[Piece], ids: list[int], offsets: list[tuple[int, int]]) -> list[int]:
        spans, pos = [], 0
        for p in pieces:
            if p.supervised:
                spans.append((pos, pos + len(p.text)))
            pos += len(p.text)
        labels = [IGNORE_INDEX] * len(ids)
        for k, (a, b) in enumerate(offsets):
            for s, e in spans:
                if a < e and b > s:  # token overlaps a supervised span
                    if a < s or b > e:
                        raise TemplateMismatch("token_straddles_supervised_span", f"token {k} at chars {a}-{b}")
                    labels[k] = ids[k]
        return labels

    def _exchange_start(self, pieces: list[Piece], offsets: list[tuple[int, int]], exchange: int, n: int) -> int:
        """Token index where exchange `exchange` begins (n when it does not exist)."""
        pos = 0
        for p in pieces:
            if p.turn == exchange:
                return bisect_left([a for a, _ in offsets], pos)
            pos += len(p.text)
        return n

    def _exchanges_that_fit(self, pieces: list[Piece], ids: list[int], offsets: list[tuple[int, int]],
                            tiles: list[int]) -> int:
        """Largest number of leading exchanges within max_seq_len tokens and the per-sample tile cap."""
        n_exchanges = max(p.turn for p in pieces) + 1
        for keep in range(n_exchanges, 0, -1):
            cut = self._exchange_start(pieces, offsets, keep, len(ids))
            n_img = sum(1 for t in ids[:cut] if t == self.img_context)
            length = cut + (self.bos is not None) + sum(self.s.num_image_token * t - 1 for t in tiles[:n_img])
            if length <= self.s.max_seq_len and sum(tiles[:n_img]) <= self.s.max_tiles_per_sample:
                return keep
        raise SkipSample("too_long", f"first exchange exceeds max_seq_len={self.s.max_seq_len} "
                                     f"or {self.s.max_tiles_per_sample} tiles")

    def _verify_supervised(self, pieces: list[Piece], ids: list[int], labels: list[int], keep: int) -> None:
        expected = [p.text for p in pieces if p.supervised and p.turn < keep]
        got, current = [], []
        for t, lab in zip(ids, labels):
            if lab != IGNORE_INDEX:
                current.append(t)
            elif current:
                got.append(current)
                current = []
        got = [g for g in got + [current] if g][: len(expected)]
        decoded = [self.tok.decode(g, skip_special_tokens=False, clean_up_tokenization_spaces=False) for g in got]
        if len(decoded) != len(expected) or any(d.strip() != e.strip() for d, e in zip(decoded, expected)):
            raise TemplateMismatch("supervised_span_mismatch", f"decoded {decoded[:2]!r} expected {expected[:2]!r}")
