"""Which samples each rank and dataloader worker reads, in which order: a pure function of the config.

Epoch mode: the shards are shuffled per epoch with a seed shared by all ranks and laid end to end as one
virtual sequence of N samples (counts from the `_stats.json` sidecars). Every rank gets `batches_per_rank`
= (N // world_size) // batch_size batches, i.e. the same number on every rank, so no rank waits at the
epoch end; the last N - world_size * batches_per_rank * batch_size samples of the sequence (fewer than one
global batch; different samples each epoch) are not trained on, but each worker inspects a slice of that
tail at the start of the epoch so that every bad sample is counted once per epoch whatever the shard order.
Rank r reads a contiguous range of the sequence, split between its workers in whole batches. The dataloader
takes batches from its workers round-robin without regard to epochs, so the rank's batch g (counted from
the start of training) always comes from worker g % num_workers, and the split of epoch e follows that:
worker w gets the batches g in [e*B, (e+1)*B) with g % num_workers == w. When B does not divide by the
workers, a worker's share therefore changes from epoch to epoch, and every epoch is still exactly once.
A worker that loses samples to bad data reads on past the end of its range (wrapping around) so that every
batch is full; those extra reads are counted as borrowed.

Each worker reads its positions in chunks of `chunk_size` (the shuffle buffer) and visits a chunk in a
random order seeded by (seed, epoch, rank, worker, chunk). A stream position is therefore (chunk,
consumed-in-chunk): resuming re-reads one chunk's raw bytes and decodes nothing it already delivered.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Piece:
    """Samples [start, stop) of one shard."""

    url: str
    start: int
    stop: int


@dataclass(frozen=True)
class EpochLayout:
    shards: tuple[str, ...]  # in this epoch's order
    offsets: tuple[int, ...]  # cumulative sample offsets, len = shards + 1
    batches_per_rank: int

    @property
    def total(self) -> int:
        return self.offsets[-1]


def epoch_layout(shards: Sequence[str], counts: Sequence[int], seed: int, epoch: int,
                 world_size: int, batch_size: int) -> EpochLayout:
    order = list(range(len(shards)))
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    offsets = [0]
    for i in order:
        offsets.append(offsets[-1] + counts[i])
    batches = (offsets[-1] // world_size) // batch_size
    return EpochLayout(tuple(shards[i] for i in order), tuple(offsets), batches)


def worker_batches(batches_per_rank: int, num_workers: int, worker: int, epoch: int = 0) -> int:
    """Batches worker `worker` produces in `epoch`: the rank's batches g in [epoch*B, (epoch+1)*B) with
    g % num_workers == worker (the dataloader's round-robin)."""
    return batches_per_rank // num_workers + (_turn(batches_per_rank, num_workers, worker, epoch)
                                              < batches_per_rank % num_workers)


def _turn(batches_per_rank: int, num_workers: int, worker: int, epoch: int) -> int:
    """Rank of `worker` in the dealing order of `epoch` (0 = the worker that yields the epoch's first batch)."""
    return (worker - epoch * batches_per_rank) % num_workers


def worker_range(layout: EpochLayout, rank: int, num_workers: int, worker: int,
                 batch_size: int, epoch: int = 0) -> tuple[int, int]:
    """[start, end) of the virtual sequence that is this worker's own share of `epoch` (the workers' shares
    are laid end to end in the epoch's dealing order)."""
    b, turn = layout.batches_per_rank, _turn(layout.batches_per_rank, num_workers, worker, epoch)
    before = turn * (b // num_workers) + min(turn, b % num_workers)
    start = (rank * b + before) * batch_size
    return start, start + batch_size * worker_batches(b, num_workers, worker, epoch)


def tail_range(layout: EpochLayout, rank: int, world_size: int, num_workers: int, worker: int,
               batch_size: int) -> tuple[int, int]:
    """[start, end) of the dropped tail (positions after the last rank's range) that this worker inspects
    (decodes only to count bad samples) at the start of the epoch; the tail is split evenly."""
    lo = world_size * layout.batches_per_rank * batch_size
    size, parts, part = layout.total - lo, world_size * num_workers, rank * num_workers + worker
    return lo + size * part // parts, lo + size * (part + 1) // parts


def epoch_chunk(layout: EpochLayout, own: tuple[int, int], chunk: int, chunk_size: int) -> list[Piece]:
    """Pieces of chunk number `chunk` of a worker: first its own range in chunks, then (only read when bad
    data made it run short) the positions after the range, wrapping around the sequence."""
    start, end = own
    own_chunks = -(-(end - start) // chunk_size)
    if chunk < own_chunks:
        lo = start + chunk * chunk_size
        return positions_to_pieces(layout, lo, min(lo + chunk_size, end))
    lo = end + (chunk - own_chunks) * chunk_size
    return positions_to_pieces(layout, lo, lo + min(chunk_size, layout.total))


def positions_to_pieces(layout: EpochLayout, lo: int, hi: int) -> list[Piece]:
    """Pieces covering virtual positions [lo, hi) taken modulo the sequence length."""
    pieces: list[Piece] = []
    while lo < hi:
        pos = lo % layout.total
        i = bisect.bisect_right(layout.offsets, pos) - 1
        take = min(hi - lo, layout.offsets[i + 1] - pos)
        pieces.append(Piece(layout.shards[i], pos - layout.offsets[i], pos - layout.offsets[i] + take))
        lo += take
    return pieces


def resampled_shard(shards_by_source: Sequence[Sequence[str]], weights: Sequence[float], seed: int,
                    rank: int, worker: int, draw: int) -> str:
    """Shard of draw number `draw` of a worker: a source by weight, then a shard of it uniformly."""
    rng = random.Random(f"resampled/{seed}/{rank}/{worker}/{draw}")
    source = rng.choices(range(len(weights)), weights=weights)[0]
    return rng.choice(shards_by_source[source])


def chunk_order(size: int, *seed_parts: object) -> list[int]:
    """The order in which a chunk's entries are visited."""
    order = list(range(size))
    random.Random("order/" + "/".join(map(str, seed_parts))).shuffle(order)
    return order
