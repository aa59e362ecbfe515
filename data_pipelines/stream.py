"""The per-worker sample stream of the pair pipeline: chunks of raw samples -> decoded, full batches.

Runs inside a dataloader worker (or the main process with num_workers=0). Every batch carries the worker's
position after it and the skip counts since its previous batch; the main process (pairs.PairLoader) turns
those into the loader state and metrics.
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipelines import plan
from data_pipelines.decode import (Normalize, SkipSample, caption_and_label, decode_image, image_bytes,
                                   to_uint8_tensor)
from data_pipelines.shards import BadSample, Entry, iter_samples, read_samples

log = logging.getLogger(__name__)
# that many undecodable samples in a row means the data is broken, not noisy: stop instead of spinning
CONSECUTIVE_SKIP_LIMIT = 10_000


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs; picklable (sent to the dataloader workers)."""

    shards: tuple[str, ...]
    counts: tuple[int, ...]  # epoch mode: samples per shard
    sources: tuple[tuple[str, ...], ...]  # resampled mode: shards of each source
    weights: tuple[float, ...]
    resampled: bool
    seed: int
    rank: int
    world_size: int
    num_workers: int
    batch_size: int
    chunk_size: int
    max_pixels: int
    geometry: Callable  # PIL -> PIL at the training resolution (decode.build_geometry)
    normalization: str
    augment_seeded: bool  # reseed torch per sample so random augmentation replays exactly on resume
    draft_size: Optional[int] = None
    max_aspect_ratio: float = 50.0


@dataclass
class Position:
    """Where a worker stands. Epoch mode: (epoch, chunk, consumed in chunk, batches done this epoch).
    Resampled mode: `epoch` counts shard draws and `chunk` the chunk within the drawn shard."""

    epoch: int = 0
    chunk: int = 0
    consumed: int = 0
    batches: int = 0


@dataclass
class _Accumulator:
    samples: list = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    borrowed: int = 0
    streak: Counter = field(default_factory=Counter)  # skips since the last good sample, by reason


class RateLimitedLog:
    """At most one warning per `interval` seconds, summarising what was skipped meanwhile."""

    def __init__(self, interval: float = 60.0):
        self.interval, self.last, self.pending = interval, float("-inf"), Counter()

    def skipped(self, key: str, reason: str) -> None:
        """`reason`: the counter name, optionally followed by ": detail"."""
        self.pending[reason.split(":", 1)[0]] += 1
        now = time.monotonic()
        if now - self.last >= self.interval:
            log.warning("data: skipped %s (latest: %s, %s)", dict(self.pending), key, reason)
            self.last, self.pending = now, Counter()


class PairStream(IterableDataset):
    """Endless batches of one rank; worker i plays logical worker (i + rotation) % num_workers so that a
    resumed loader continues the round-robin order of the dataloader exactly."""

    def __init__(self, spec: StreamSpec, starts: dict[int, Position], rotation: int):
        self.spec, self.starts, self.rotation = spec, starts, rotation

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        worker = (physical + self.rotation) % self.spec.num_workers
        start = self.starts.get(worker, Position())
        chunks = _resampled_chunks if self.spec.resampled else _epoch_chunks
        yield from _batches(self.spec, worker, start, chunks(self.spec, worker, start))


OWN, BORROWED, INSPECT = "own", "borrowed", "inspect"  # the role of a chunk (see _epoch_chunks)
Chunk = tuple[Position, list[Entry], str]


def _epoch_chunks(spec: StreamSpec, worker: int, start: Position) -> Iterator[Chunk]:
    """(position of the chunk, its entries, role), endlessly. Per epoch: first the worker's slice of the
    dropped tail (INSPECT: decoded only to count bad samples; not repeated by a resume inside the epoch),
    then its own range in chunks (OWN), then, only if bad data made it run short, the positions after it
    (BORROWED). Sending "epoch_done" moves to the next epoch."""
    epoch, chunk = start.epoch, start.chunk
    fresh = start == Position(start.epoch)
    while True:
        layout = plan.epoch_layout(spec.shards, spec.counts, spec.seed, epoch, spec.world_size, spec.batch_size)
        if fresh:
            lo, hi = plan.tail_range(layout, spec.rank, spec.world_size, spec.num_workers, worker, spec.batch_size)
            pieces = plan.positions_to_pieces(layout, lo, hi)
            yield Position(epoch, 0, 0, 0), [e for p in pieces for e in read_samples(p.url, p.start, p.stop)], INSPECT
        own = plan.worker_range(layout, spec.rank, spec.num_workers, worker, spec.batch_size, epoch)
        own_chunks = -(-(own[1] - own[0]) // spec.chunk_size)
        while True:
            pieces = plan.epoch_chunk(layout, own, chunk, spec.chunk_size)
            entries = [e for p in pieces for e in read_samples(p.url, p.start, p.stop)]
            status = yield Position(epoch, chunk, 0, 0), entries, OWN if chunk < own_chunks else BORROWED
            chunk += 1
            if status == "epoch_done":
                break
        epoch, chunk, fresh = epoch + 1, 0, True


def _resampled_chunks(spec: StreamSpec, worker: int, start: Position) -> Iterator[Chunk]:
    """Drawn shards, each streamed once and cut into chunks (a resume skips to the chunk's first sample)."""
    draw, chunk = start.epoch, start.chunk
    while True:
        url = plan.resampled_shard(spec.sources, spec.weights, spec.seed, spec.rank, worker, draw)
        samples = iter_samples(url, chunk * spec.chunk_size)
        while True:
            entries = list(itertools.islice(samples, spec.chunk_size))
            if entries:
                yield Position(draw, chunk, 0, 0), entries, OWN
            if len(entries) < spec.chunk_size:
                break
            chunk += 1
        draw, chunk = draw + 1, 0


def _quota(spec: StreamSpec, worker: int, epoch: int) -> Optional[int]:
    """Batches this worker yields in `epoch` (None: resampled, no epochs)."""
    if spec.resampled:
        return None
    per_rank = plan.epoch_layout(spec.shards, spec.counts, spec.seed, 0, spec.world_size,
                                 spec.batch_size).batches_per_rank  # the same in every epoch
    return plan.worker_batches(per_rank, spec.num_workers, worker, epoch)


def _batches(spec: StreamSpec, worker: int, start: Position, chunks) -> Iterator[dict[str, Any]]:
    """Full batches from the chunks. Bad samples are counted where they are owned (OWN, INSPECT chunks), so
    each is counted once per epoch; one met while borrowing was counted by its owner and is only skipped."""
    acc, logger, normalize = _Accumulator(), RateLimitedLog(), Normalize(spec.normalization)
    batches, consumed_from, status = start.batches, start.consumed, None
    item = next(chunks)
    while True:
        position, entries, role = item
        if role == INSPECT:
            _inspect(spec, entries, acc, logger)
            item = next(chunks)
            continue
        quota = _quota(spec, worker, position.epoch)
        order = plan.chunk_order(len(entries), spec.seed, position.epoch, spec.rank, worker, position.chunk)
        for j in range(consumed_from, len(order)):
            sample = _decode(spec, entries[order[j]], acc, logger, (position, worker, j), count=role == OWN)
            if sample is None:
                _check_streak(acc.streak, spec)
                continue
            acc.streak.clear()
            acc.borrowed += role == BORROWED
            acc.samples.append(sample)
            if len(acc.samples) == spec.batch_size:
                batches += 1
                done = quota is not None and batches == quota
                here = Position(position.epoch + done, 0 if done else position.chunk,
                                0 if done else j + 1, 0 if done else batches)
                yield _collate(acc, worker, here, normalize)
                acc = _Accumulator(streak=acc.streak)
                if done:
                    batches, status = 0, "epoch_done"
                    break
        consumed_from = 0
        item = chunks.send(status) if status else next(chunks)
        status = None


def _inspect(spec: StreamSpec, entries: list[Entry], acc: _Accumulator, logger: RateLimitedLog) -> None:
    """Count the bad samples among entries that no batch uses (the dropped tail)."""
    for entry in entries:
        try:
            _checked_parts(spec, entry)
        except SkipSample as skip:
            _count(entry, skip, acc, logger)


def _check_streak(streak: Counter, spec: StreamSpec) -> None:
    if sum(streak.values()) >= CONSECUTIVE_SKIP_LIMIT:
        raise RuntimeError(f"data: {CONSECUTIVE_SKIP_LIMIT} samples in a row could not be used "
                           f"({dict(streak)}) in shards like {spec.shards[:1] or spec.sources[0][:1]}: "
                           f"the shards are broken or not image-text pairs")


def _transform(spec: StreamSpec, image: Any, where: tuple[Position, int, int]) -> torch.Tensor:
    if not spec.augment_seeded:
        return to_uint8_tensor(spec.geometry(image))
    position, worker, j = where
    # seeded per sample so augmentation replays on resume; forked so the caller's RNG stream is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hash((spec.seed, spec.rank, worker, position.epoch, position.chunk, j)) & 0x7FFFFFFF)
        return to_uint8_tensor(spec.geometry(image))


def _checked_parts(spec: StreamSpec, entry: Entry) -> tuple[Any, str, int]:
    """(RGB image, caption, label) of a raw sample, or SkipSample."""
    if isinstance(entry, BadSample):
        raise SkipSample(entry.reason)
    data = image_bytes(entry)
    caption, label = caption_and_label(entry)
    return decode_image(data, spec.max_pixels, spec.draft_size, spec.max_aspect_ratio), caption, label


def _decode(spec: StreamSpec, entry: Entry, acc: _Accumulator, logger: RateLimitedLog,
            where: tuple[Position, int, int], count: bool = True) -> Optional[tuple]:
    try:
        image, caption, label = _checked_parts(spec, entry)
        return _transform(spec, image, where), caption, entry["__key__"], label
    except SkipSample as skip:
        acc.streak[skip.reason] += 1
        if count:
            _count(entry, skip, acc, logger)
        return None


def _count(entry: Entry, skip: SkipSample, acc: _Accumulator, logger: RateLimitedLog) -> None:
    key = entry.key if isinstance(entry, BadSample) else f"{entry.get('__url__', '?')}#{entry.get('__key__', '?')}"
    acc.skipped[skip.reason] += 1
    logger.skipped(key, str(skip))


def _collate(acc: _Accumulator, worker: int, position: Position, normalize: Normalize) -> dict[str, Any]:
    images, captions, keys, labels = zip(*acc.samples)
    batch: dict[str, Any] = {"pixel_values": normalize(torch.stack(images)), "captions": list(captions),
                             "keys": list(keys)}
    if any(label >= 0 for label in labels):
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    batch["_meta"] = {"worker": worker, "position": position, "skipped": dict(acc.skipped),
                      "borrowed": acc.borrowed}
    return batch
