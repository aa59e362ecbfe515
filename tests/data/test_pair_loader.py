"""Epoch semantics, determinism and exact resume of the pair loader, on real shards and real workers."""
from __future__ import annotations

import itertools

import pytest
import torch

from data_pipelines.pairs import build_pair_loader
from tests.data.helpers import pair_config


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["keys"]]


@pytest.mark.slow
def test_exactly_once_per_epoch_2_ranks_x_2_workers(even_shards):
    urls, total = even_shards
    cfg = pair_config(urls, num_workers=2)
    seen, counts = [], []
    for rank in range(2):
        loader = build_pair_loader(cfg, rank=rank, world_size=2, micro_batch_size=4, seed=3)
        counts.append(loader.batches_per_epoch)
        batches = take(loader, loader.batches_per_epoch)
        assert all(b["pixel_values"].shape == (4, 3, 16, 16) for b in batches)
        seen += keys_of(batches)
    assert counts == [12, 12]
    assert len(seen) == total and set(seen) == {f"s{i:05d}" for i in range(total)}


@pytest.mark.slow
def test_uneven_shards_equal_batches_no_duplicates(uneven_shards):
    urls, total = uneven_shards  # 101 samples: 2 ranks x 6 batches x 8 = 96, tail of 5 dropped
    cfg = pair_config(urls, num_workers=2)
    per_rank = []
    for rank in range(2):
        loader = build_pair_loader(cfg, rank=rank, world_size=2, micro_batch_size=8, seed=0)
        per_rank.append(keys_of(take(loader, loader.batches_per_epoch)))
        assert loader.batches_per_epoch == (total // 2) // 8
    union = per_rank[0] + per_rank[1]
    assert len(union) == len(set(union)) == 2 * 6 * 8
    assert total - len(union) < 2 * 8  # the dropped tail is less than one global batch


def test_order_reproducible_and_reshuffled_each_epoch(uneven_shards):
    urls, _ = uneven_shards
    cfg = pair_config(urls)
    first = keys_of(take(build_pair_loader(cfg, 0, 1, 4, seed=1), 50))
    again = keys_of(take(build_pair_loader(cfg, 0, 1, 4, seed=1), 50))
    other_seed = keys_of(take(build_pair_loader(cfg, 0, 1, 4, seed=2), 50))
    assert first == again
    assert first != other_seed
    epoch0, epoch1 = first[:100], first[100:200]
    assert sorted(epoch0) == sorted(epoch1) and epoch0 != epoch1


def _resume_matches(cfg, stop_at: int, total: int, batch: int = 4) -> None:
    reference = take(build_pair_loader(cfg, 0, 1, batch, seed=5), total)
    loader = build_pair_loader(cfg, 0, 1, batch, seed=5)
    head = take(loader, stop_at)
    state = loader.state_dict()
    resumed = build_pair_loader(cfg, 0, 1, batch, seed=5)
    resumed.load_state_dict(state)
    tail = take(resumed, total - stop_at)
    assert keys_of(head + tail) == keys_of(reference)
    for got, want in zip(head + tail, reference):
        assert torch.equal(got["pixel_values"], want["pixel_values"])  # augmentation replays too
    assert resumed.metrics()["data/batches"] == total


def test_resume_mid_epoch_same_remaining_samples(uneven_shards):
    cfg = pair_config(uneven_shards[0])
    cfg.augment.random_resized_crop, cfg.augment.hflip = True, True
    _resume_matches(cfg, stop_at=7, total=30)  # 25 batches per epoch: crosses into epoch 2


@pytest.mark.slow
def test_resume_with_two_workers_keeps_round_robin(uneven_shards):
    cfg = pair_config(uneven_shards[0], num_workers=2)
    _resume_matches(cfg, stop_at=5, total=16)  # odd stop: the resumed loader starts at worker 1


def test_resume_in_resampled_mode(uneven_shards):
    _resume_matches(pair_config(uneven_shards[0], resampled=True), stop_at=9, total=20)


def test_resume_rejects_other_layout(uneven_shards):
    loader = build_pair_loader(pair_config(uneven_shards[0]), 0, 1, 4, seed=5)
    take(loader, 2)
    other = build_pair_loader(pair_config(uneven_shards[0]), 0, 1, 8, seed=5)
    with pytest.raises(ValueError, match="micro-batch size"):
        other.load_state_dict(loader.state_dict())


def test_resampled_mode_is_endless_and_reproducible(uneven_shards, even_shards):
    from data_pipelines.config import PairSourceConfig

    cfg = pair_config(uneven_shards[0], resampled=True)
    cfg.sources = [PairSourceConfig(urls=uneven_shards[0], weight=1.0),
                   PairSourceConfig(urls=even_shards[0], weight=9.0)]
    keys = keys_of(take(build_pair_loader(cfg, 0, 1, 8, seed=0), 60))
    assert len(keys) == 480  # 4.75 passes over 101 + 96 samples: no epoch end
    again = keys_of(take(build_pair_loader(cfg, 0, 1, 8, seed=0), 60))
    assert keys == again


def test_resampled_shard_draws_follow_source_weights():
    from data_pipelines.plan import resampled_shard

    draws = [resampled_shard([["a0", "a1"], ["b0"]], [1.0, 9.0], seed=0, rank=0, worker=0, draw=d)
             for d in range(4000)]
    share_b = draws.count("b0") / len(draws)
    assert 0.88 < share_b < 0.92
    assert draws.count("a0") > 150 and draws.count("a1") > 150


def test_augmentation_leaves_the_callers_rng_alone(uneven_shards):
    cfg = pair_config(uneven_shards[0])  # num_workers=0: decoding runs in this process
    cfg.augment.random_resized_crop = True
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    take(build_pair_loader(cfg, 0, 1, 4, seed=0), 3)
    assert torch.equal(torch.rand(3), expected)


def test_epoch_split_is_a_partition_following_the_round_robin():
    from data_pipelines.plan import epoch_layout, tail_range, worker_batches, worker_range

    shards, counts = [f"s{i}" for i in range(5)], [7, 13, 2, 21, 9]  # 52 samples
    for world, workers, batch in ((2, 3, 3), (3, 2, 2), (1, 4, 5), (2, 3, 4)):
        for epoch in range(5):
            layout = epoch_layout(shards, counts, 0, epoch, world, batch)
            b = layout.batches_per_rank
            ranges = [worker_range(layout, r, workers, w, batch, epoch) for r in range(world) for w in range(workers)]
            ranges += [tail_range(layout, r, world, workers, w, batch) for r in range(world) for w in range(workers)]
            covered = sorted(p for lo, hi in ranges for p in range(lo, hi))
            assert covered == list(range(layout.total)), (world, workers, batch, epoch)
            for w in range(workers):  # the dataloader hands batch g of the rank to worker g % workers
                expected = sum(1 for g in range(epoch * b, (epoch + 1) * b) if g % workers == w)
                assert worker_batches(b, workers, w, epoch) == expected


def _epochs_exactly_once(per_rank: list[list[str]], per_epoch: int, epochs: int, total: int) -> None:
    for epoch in range(epochs):
        keys = [k for keys in per_rank for k in keys[epoch * per_epoch:(epoch + 1) * per_epoch]]
        assert len(keys) == len(set(keys)), f"epoch {epoch}: duplicates"
        assert total - len(keys) < len(per_rank) * 5, f"epoch {epoch}: samples unseen"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
def test_exactly_once_every_epoch_with_uneven_batches_per_worker(uneven_shards):
    """2 ranks x 3 real workers, 10 batches per rank per epoch (4/3/3 per worker, rotating): 3 epochs, each
    sample once per epoch; a loader resumed inside epoch 1 yields the same batches."""
    urls, total = uneven_shards  # 101 samples: 2 ranks x 10 batches x 5
    cfg = pair_config(urls, num_workers=3)
    per_rank = []
    for rank in range(2):
        loader = build_pair_loader(cfg, rank=rank, world_size=2, micro_batch_size=5, seed=7)
        assert loader.batches_per_epoch == 10
        batches = take(loader, 30)
        per_rank.append(keys_of(batches))
        head_loader = build_pair_loader(cfg, rank=rank, world_size=2, micro_batch_size=5, seed=7)
        head = keys_of(take(head_loader, 13))
        resumed = build_pair_loader(cfg, rank=rank, world_size=2, micro_batch_size=5, seed=7)
        resumed.load_state_dict(head_loader.state_dict())
        assert head + keys_of(take(resumed, 17)) == per_rank[-1]
    _epochs_exactly_once(per_rank, per_epoch=50, epochs=3, total=total)
    assert per_rank[0][:50] != per_rank[0][50:100]  # reshuffled between epochs
