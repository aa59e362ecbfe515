"""The resumable SFT loader: a deterministic sample order per (seed, epoch, rank), ordered decoding threads,
greedy packing, and a state that is a position, never a replay.

Order: epoch e permutes all records with seed (seed, e); rank r takes every world_size-th record of the
permutation, cut to len // world_size so every rank sees the same number per epoch. The stream is endless
(epochs follow each other). Packing is greedy in stream order: a row takes samples until the next one
does not fit; that one (the carry) opens the next row. The state is (epoch, cursor, carry index,
counters): on resume the carry is re-encoded from its index (encoding is deterministic) and reading goes
on from the cursor, so a resumed run yields exactly the batches the uninterrupted run would have.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np

from data_pipelines.sft.encode import ConversationEncoder, EncodedSample
from data_pipelines.skip import SkipSample
from data_pipelines.sft.packing import collate_rows
from data_pipelines.sft.source import ConversationSource
from data_pipelines.sft.templates import TemplateMismatch

log = logging.getLogger(__name__)
_LOGGED_PER_REASON = 5  # warnings per skip reason; the counters carry the rest

Outcome = Union[EncodedSample, tuple[str, str]]  # a sample, or (reason, detail) when skipped


class _Done(Future):
    """An already-resolved future, for decoding in the calling thread (num_workers=0)."""

    def __init__(self, value: Outcome):
        super().__init__()
        self.set_result(value)


class SftLoader:
    """Endless micro-batches of SFT rows for one rank (implements engine.stage_api.StatefulLoader)."""

    def __init__(self, source: ConversationSource, encoder: ConversationEncoder, *, rank: int, world_size: int,
                 micro_batch_size: int, seed: int, packing: bool, max_packed_tokens: int, max_tiles_per_row: int,
                 loss_reduction: str, pad_id: int, image_size: int, num_workers: int = 0, prefetch: int = 16,
                 max_consecutive_failures: int = 200):
        if len(source) < world_size:
            raise ValueError(f"{len(source)} SFT records cannot be split over {world_size} ranks")
        self.source, self.encoder = source, encoder
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro_batch_size, self.packing = micro_batch_size, packing
        self.max_packed_tokens, self.max_tiles_per_row = max_packed_tokens, max_tiles_per_row
        self.loss_reduction, self.pad_id, self.image_size = loss_reduction, pad_id, image_size
        self.prefetch, self.max_failures = max(1, prefetch), max_consecutive_failures
        self.per_rank = len(source) // world_size
        self._pool = ThreadPoolExecutor(num_workers, thread_name_prefix="sft-decode") if num_workers else None
        self.epoch, self.cursor = 0, 0  # position of the next sample the packer consumes
        self.carry: Optional[int] = None  # record index of the sample that opens the next row
        self._carry_sample: Optional[EncodedSample] = None
        self.counters: Counter[str] = Counter()
        self._order_cache: tuple[int, Optional[np.ndarray]] = (-1, None)
        self._reset_lookahead()

    # ---- order -------------------------------------------------------------------------------
    def rank_order(self, epoch: int) -> np.ndarray:
        """Record indices this rank reads in `epoch` (same length on every rank)."""
        if self._order_cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
            self._order_cache = (epoch, perm[self.rank::self.world_size][: self.per_rank])
        return self._order_cache[1]

    def _advance(self, epoch: int, cursor: int) -> tuple[int, int]:
        cursor += 1
        return (epoch + 1, 0) if cursor >= self.per_rank else (epoch, cursor)

    # ---- decoding with ordered lookahead ------------------------------------------------------
    def _reset_lookahead(self) -> None:
        self._queue: deque[tuple[int, int, int, Future]] = deque()
        self._submit_at = (self.epoch, self.cursor)

    def _encode(self, index: int) -> Outcome:
        try:
            record, spec = self.source.read(index)
            return self.encoder.encode(record, spec)
        except (SkipSample, TemplateMismatch) as e:
            return (e.reason, str(e))
        except ValueError as e:  # unreadable annotation line
            return ("bad_record", str(e))

    def _submit(self, index: int) -> Future:
        return self._pool.submit(self._encode, index) if self._pool else _Done(self._encode(index))

    def _next_outcome(self) -> tuple[int, Outcome]:
        while len(self._queue) < self.prefetch:
            epoch, cursor = self._submit_at
            index = int(self.rank_order(epoch)[cursor])
            nxt = self._advance(epoch, cursor)
            self._queue.append((*nxt, index, self._submit(index)))
            self._submit_at = nxt
        epoch, cursor, index, future = self._queue.popleft()
        self.epoch, self.cursor = epoch, cursor
        return index, future.result()

    def _next_sample(self) -> tuple[int, EncodedSample]:
        failures: Counter[str] = Counter()
        while True:
            index, outcome = self._next_outcome()
            if isinstance(outcome, EncodedSample):
                self.counters["samples"] += 1
                self.counters["truncated"] += int(outcome.truncated)
                return index, outcome
            reason, detail = outcome
            self.counters[f"skipped/{reason}"] += 1
            failures[reason] += 1
            if self.counters[f"skipped/{reason}"] <= _LOGGED_PER_REASON:
                log.warning("SFT sample %d skipped (%s)", index, detail)
            if sum(failures.values()) >= self.max_failures:
                raise RuntimeError(f"{self.max_failures} SFT samples in a row were skipped ({dict(failures)}): "
                                   "check the template / tokenizer pairing and the image root")

    # ---- rows and batches ---------------------------------------------------------------------
    def _next_row(self) -> list[EncodedSample]:
        row, tokens, tiles = [], 0, 0
        while True:
            if self.carry is not None:
                index, sample = self.carry, self._carry_sample or self._encode(self.carry)
                self.carry, self._carry_sample = None, None
                if not isinstance(sample, EncodedSample):  # its files changed since the checkpoint
                    self.counters[f"skipped/{sample[0]}"] += 1
                    continue
            else:
                index, sample = self._next_sample()
            n_tiles = int(sample.pixel_values.shape[0])
            if row and (tokens + len(sample.input_ids) > self.max_packed_tokens
                        or tiles + n_tiles > self.max_tiles_per_row):
                self.carry, self._carry_sample = index, sample
                return row
            row.append(sample)
            tokens, tiles = tokens + len(sample.input_ids), tiles + n_tiles
            if not self.packing:
                return row

    def next_batch(self) -> dict[str, Any]:
        rows = [self._next_row() for _ in range(self.micro_batch_size)]
        self.counters["rows"] += len(rows)
        self.counters["row_tokens"] += sum(len(s.input_ids) for row in rows for s in row)
        return collate_rows(rows, self.pad_id, self.loss_reduction, self.image_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_batch()

    def close(self) -> None:
        """Stop the decoding threads (the loader cannot be iterated afterwards)."""
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "carry": self.carry, "seed": self.seed,
                "world_size": self.world_size, "num_records": len(self.source), "counters": dict(self.counters)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expect = {"seed": self.seed, "world_size": self.world_size, "num_records": len(self.source)}
        differ = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
        if differ:
            raise ValueError(f"SFT loader state does not match this run (saved, now): {differ}; "
                             "resume with the same seed, world size and data")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.carry, self._carry_sample = state.get("carry"), None
        self.counters = Counter(state.get("counters", {}))
        for *_, future in self._queue:
            future.cancel()
        self._reset_lookahead()

    def metrics(self) -> dict[str, float]:
        out = {f"data/sft/{k}": float(v) for k, v in self.counters.items() if k != "row_tokens"}
        out["data/sft/epoch"] = float(self.epoch)
        if self.counters["rows"]:
            out["data/sft/samples_per_row"] = self.counters["samples"] / self.counters["rows"]
            if self.packing:
                out["data/sft/pack_fill"] = self.counters["row_tokens"] / (self.counters["rows"] * self.max_packed_tokens)
        return out
