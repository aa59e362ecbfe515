"""Decode workers ignore the signals a cluster or a terminal sends the whole job (SIGTERM, SIGINT, SIGUSR1):
the trainer owns shutdown, so a signalled worker keeps serving batches instead of dying first."""
from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

from data_pipelines.pairs import build_pair_loader
from tests.data.helpers import pair_config


def child_pids() -> list[int]:
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def test_signalled_workers_keep_serving_batches(even_shards):
    urls, _ = even_shards
    loader = build_pair_loader(pair_config(urls, num_workers=2), rank=0, world_size=1, micro_batch_size=4, seed=0)
    batches = iter(loader)
    first = list(itertools.islice(batches, 2))
    workers = child_pids()
    assert len(workers) >= 2
    for pid in workers:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            os.kill(pid, sig)
    more = list(itertools.islice(batches, 8))  # a dead worker would raise "DataLoader worker ... killed"
    assert len(first) + len(more) == 10 and all(b["pixel_values"].shape[0] == 4 for b in more)
    assert set(workers) <= set(child_pids())
