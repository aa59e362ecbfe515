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
from data_pipelines.decode import (Normalize, caption_and_label, decode_image, image_bytes,
                                   to_uint8_tensor)
from data_pipelines.shards import BadSample, Entry, iter_samples, read_samples
from data_pipelines.skip import SkipSample

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
        yield from WorkerStream(self.spec, worker, self.starts.get(worker, Position()))


class WorkerStream:
    """The endless batches of one logical worker from `start` on. Each batch's _meta carries the Position
    right after it: a WorkerStream started there yields exactly the batches that would have followed.

    Epoch mode: per epoch, first the worker's slice of the dropped tail (decoded only to count bad samples;
    skipped by a resume inside the epoch), then its own range in chunks, then, only if bad data made it run
    short, the positions after it (borrowed), until the worker's quota of batches for the epoch is met.
    Resampled mode: shard draws one after the other, each streamed once in chunks; no quota.
    """

    def __init__(self, spec: StreamSpec, worker: int, start: Position):
        self.spec, self.worker, self.start = spec, worker, start
        self.pending = _Accumulator()  # the batch being filled and the skips since the previous batch
        self.logger = RateLimitedLog()
        self.normalize = Normalize(spec.normalization)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._resampled() if self.spec.resampled else self._epochs()

    def _epochs(self) -> Iterator[dict[str, Any]]:
        start = self.start
        while True:
            yield from self._epoch(start)
            start = Position(start.epoch + 1)

    def _epoch(self, start: Position) -> Iterator[dict[str, Any]]:
        """The batches of epoch start.epoch from `start` on; returns once the worker's quota is met."""
        spec, epoch = self.spec, start.epoch
        layout = plan.epoch_layout(spec.shards, spec.counts, spec.seed, epoch, spec.world_size, spec.batch_size)
        if start == Position(epoch):  # at the epoch start; a resume inside the epoch has counted the tail
            self._inspect_tail(layout)
        own = plan.worker_range(layout, spec.rank, spec.num_workers, self.worker, spec.batch_size, epoch)
        own_chunks = -(-(own[1] - own[0]) // spec.chunk_size)
        quota = plan.worker_batches(layout.batches_per_rank, spec.num_workers, self.worker, epoch)
        batches, consumed = start.batches, start.consumed
        for chunk in itertools.count(start.chunk):
            entries = _read(plan.epoch_chunk(layout, own, chunk, spec.chunk_size))
            for j in self._batch_ends(epoch, chunk, entries, consumed, borrowed=chunk >= own_chunks):
                batches += 1
                if batches == quota:
                    yield self._take_batch(Position(epoch + 1))
                    return  # the rest of the chunk belongs to no batch of this epoch
                yield self._take_batch(Position(epoch, chunk, j + 1, batches))
            consumed = 0

    def _resampled(self) -> Iterator[dict[str, Any]]:
        """Position.epoch counts shard draws and Position.chunk the chunk within the drawn shard; a resume
        skips to the chunk's first sample."""
        spec, start = self.spec, self.start
        batches, consumed = start.batches, start.consumed
        for draw in itertools.count(start.epoch):
            first_chunk = start.chunk if draw == start.epoch else 0
            url = plan.resampled_shard(spec.sources, spec.weights, spec.seed, spec.rank, self.worker, draw)
            samples = iter_samples(url, first_chunk * spec.chunk_size)
            for chunk in itertools.count(first_chunk):
                entries = list(itertools.islice(samples, spec.chunk_size))
                if entries:
                    for j in self._batch_ends(draw, chunk, entries, consumed, borrowed=False):
                        batches += 1
                        yield self._take_batch(Position(draw, chunk, j + 1, batches))
                    consumed = 0
                if len(entries) < spec.chunk_size:
                    break  # the shard is done

    def _batch_ends(self, epoch: int, chunk: int, entries: list[Entry], consumed: int,
                    borrowed: bool) -> Iterator[int]:
        """Adds the chunk's samples, in the chunk's order and after the first `consumed`, to the pending
        batch; yields the index j of each sample that fills it (the caller then takes the batch). A bad
        sample is counted only where it is owned, so once per epoch; a borrowed one was counted by its owner."""
        spec = self.spec
        order = plan.chunk_order(len(entries), spec.seed, epoch, spec.rank, self.worker, chunk)
        for j in range(consumed, len(order)):
            sample = _decode(spec, entries[order[j]], self.pending, self.logger, (self.worker, epoch, chunk, j),
                             count=not borrowed)
            if sample is None:
                _check_streak(self.pending.streak, spec)
                continue
            self.pending.streak.clear()
            self.pending.borrowed += borrowed
            self.pending.samples.append(sample)
            if len(self.pending.samples) == spec.batch_size:
                yield j

    def _take_batch(self, resume_at: Position) -> dict[str, Any]:
        batch = _collate(self.pending, self.worker, resume_at, self.normalize)
        self.pending = _Accumulator(streak=self.pending.streak)  # a skip streak runs across batches
        return batch

    def _inspect_tail(self, layout: plan.EpochLayout) -> None:
        spec = self.spec
        lo, hi = plan.tail_range(layout, spec.rank, spec.world_size, spec.num_workers, self.worker,
                                 spec.batch_size)
        _inspect(spec, _read(plan.positions_to_pieces(layout, lo, hi)), self.pending, self.logger)


def _read(pieces: list[plan.Piece]) -> list[Entry]:
    return [e for p in pieces for e in read_samples(p.url, p.start, p.stop)]


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


def _transform(spec: StreamSpec, image: Any, where: tuple[int, int, int, int]) -> torch.Tensor:
    """`where`: (worker, epoch, chunk, index in the chunk's order) of the sample."""
    if not spec.augment_seeded:
        return to_uint8_tensor(spec.geometry(image))
    worker, epoch, chunk, j = where
    # seeded per sample so augmentation replays on resume; forked so the caller's RNG stream is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hash((spec.seed, spec.rank, worker, epoch, chunk, j)) & 0x7FFFFFFF)
        return to_uint8_tensor(spec.geometry(image))


def _checked_parts(spec: StreamSpec, entry: Entry) -> tuple[Any, str, int]:
    """(RGB image, caption, label) of a raw sample, or SkipSample."""
    if isinstance(entry, BadSample):
        raise SkipSample(entry.reason)
    data = image_bytes(entry)
    caption, label = caption_and_label(entry)
    return decode_image(data, spec.max_pixels, spec.draft_size, spec.max_aspect_ratio), caption, label


def _decode(spec: StreamSpec, entry: Entry, acc: _Accumulator, logger: RateLimitedLog,
            where: tuple[int, int, int, int], count: bool = True) -> Optional[tuple]:
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
