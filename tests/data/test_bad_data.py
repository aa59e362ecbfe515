"""Bad data is skipped, counted exactly by reason, and never stops the stream; pickle is never loaded."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import pytest
from PIL import Image

from data_pipelines.config import EvalSetConfig
from data_pipelines.eval_sets import build_pair_eval_set
from data_pipelines.pairs import build_pair_loader
from data_pipelines.plan import epoch_layout
from tests.data.helpers import pair_config, png_bytes, write_shard

INJECTED = {"corrupt_image": 2, "truncated_image": 3, "missing_caption": 2, "empty_caption": 1,
            "oversized_image": 2, "pickle_member": 1, "missing_image": 1}
TRUNCATED_TAR_LOST = 6  # samples 4..9 of a 10-sample shard


class _Exploit:
    """Unpickling this creates a marker file: the test fails if anything ever unpickles a member."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _noise(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (48, 48), os.urandom(48 * 48 * 3)).save(out, format=fmt)
    return out.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _bad_samples(marker: str) -> list[dict]:
    good = lambda i: {"png": png_bytes(i), "txt": f"bad shard good {i}".encode()}  # noqa: E731
    samples = [dict(good(0), png=b"not an image at all"), dict(good(1), png=b"\x89PNG\r\n\x1a\n" + os.urandom(64)),
               dict(good(2), png=_half(_noise("PNG"))), {"jpg": _half(_noise("JPEG")), "txt": b"cut jpeg"},
               {"jpg": _half(_noise("JPEG")), "txt": b"cut jpeg 2"},
               {"png": png_bytes(5)}, {"png": png_bytes(6), "json": b'{"url": "x"}'},
               dict(good(7), txt=b"   "), {"png": png_bytes(8, size=100), "txt": b"huge"},
               {"png": png_bytes(9, size=120), "txt": b"huge 2"},
               dict(good(10), pyd=pickle.dumps(_Exploit(marker))), {"txt": b"no image member"}]
    return [dict(s, __key__=f"bad{i:03d}") for i, s in enumerate(samples)] + [
        dict(good(100 + i), __key__=f"badgood{i:03d}") for i in range(4)]


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory) -> tuple[str, int, str]:
    root = tmp_path_factory.mktemp("bad")
    marker = str(root / "UNPICKLED")
    write_shard(str(root / "bad-0.tar"), _bad_samples(marker))
    truncated = str(root / "trunc-0.tar")
    write_shard(truncated, [{"__key__": f"tr{i:03d}", "png": png_bytes(200 + i), "txt": b"t"} for i in range(10)])
    with tarfile.open(truncated) as tf:
        cut = next(m for m in tf.getmembers() if m.name == "tr004.png").offset_data + 10
    with open(truncated, "r+b") as f:
        f.truncate(cut)  # inside sample 4's image: samples 4..9 are lost
    goods = []
    for shard in range(3):
        path = str(root / f"good-{shard}.tar")
        write_shard(path, [{"__key__": f"g{shard}_{i:03d}", "png": png_bytes(i), "txt": b"fine"} for i in range(20)])
        goods.append(path)
    urls = "::".join([str(root / "bad-0.tar"), truncated] + goods)
    return urls, 16 + 10 + 60, marker


def _expected() -> dict[str, float]:
    out = {f"data/skipped/{k}": float(v) for k, v in INJECTED.items()}
    out["data/skipped/truncated_tar"] = float(TRUNCATED_TAR_LOST)
    return out


def test_eval_reader_counts_each_kind_exactly(bad_dataset):
    urls, _, marker = bad_dataset
    eval_set = build_pair_eval_set(EvalSetConfig(name="bad", shards=urls, batch_size=7), image_size=16,
                                   max_image_pixels=50 * 50)
    keys = [k for batch in eval_set for k in batch["keys"]]
    bad_total = sum(INJECTED.values()) + TRUNCATED_TAR_LOST
    assert len(keys) == 86 - bad_total and not any(k.startswith("bad0") for k in keys)
    assert eval_set.metrics() == {k.replace("data/", "data/eval/bad/"): v for k, v in _expected().items()}
    assert not os.path.exists(marker)


def _seed_with_good_first_shard(urls: str, counts: list[int]) -> int:
    """A seed whose epoch-0 order starts with a good shard, so the wrap-around reads that replace bad
    samples meet only good ones and the counts stay exact."""
    shards = urls.split("::")
    return next(s for s in range(100)
                if os.path.basename(epoch_layout(shards, counts, s, 0, 1, 1).shards[0]).startswith("good"))


def test_training_loader_skips_counts_and_keeps_batches_full(bad_dataset):
    urls, total, marker = bad_dataset
    cfg = pair_config(urls, max_image_pixels=50 * 50)
    seed = _seed_with_good_first_shard(urls, [16, 10, 20, 20, 20])
    loader = build_pair_loader(cfg, 0, 1, micro_batch_size=1, seed=seed)
    assert loader.batches_per_epoch == total
    batches = [b for _, b in zip(range(total), loader)]
    keys = [b["keys"][0] for b in batches]
    bad_total = sum(INJECTED.values()) + TRUNCATED_TAR_LOST
    metrics = loader.metrics()
    assert {k: v for k, v in metrics.items() if k.startswith("data/skipped/")} == _expected()
    assert metrics["data/skipped_total"] == bad_total
    assert metrics["data/borrowed_samples"] == bad_total  # every batch stayed full
    assert not any(k.startswith("bad0") or k in {f"tr{i:03d}" for i in range(4, 10)} for k in keys)
    assert not os.path.exists(marker)


def test_shards_without_usable_samples_stop_with_the_reasons(tmp_path, monkeypatch):
    import data_pipelines.stream as stream

    monkeypatch.setattr(stream, "CONSECUTIVE_SKIP_LIMIT", 50)
    write_shard(str(tmp_path / "junk-0.tar"), [{"__key__": f"j{i:03d}", "txt": b"caption only"} for i in range(30)])
    loader = build_pair_loader(pair_config(str(tmp_path / "junk-0.tar"), resampled=True), 0, 1, 4, seed=0)
    with pytest.raises(RuntimeError, match="missing_image"):
        next(iter(loader))


def _skip_counts(urls: str, seed: int, world: int, workers: int, epochs: int) -> dict[str, float]:
    total: dict[str, float] = {}
    for rank in range(world):
        loader = build_pair_loader(pair_config(urls, max_image_pixels=50 * 50, num_workers=workers), rank, world,
                                   micro_batch_size=4, seed=seed)
        for _ in zip(range(epochs * loader.batches_per_epoch), loader):
            pass
        for key, value in loader.metrics().items():
            if key.startswith("data/skipped/"):
                total[key] = total.get(key, 0.0) + value
    return total


def test_skip_counts_do_not_depend_on_the_seed_or_on_borrowing(bad_dataset):
    """86 samples over 2 ranks x 10 batches of 4: 6 dropped each epoch, which ones depends on the seed. Every
    bad sample is counted once per epoch whether it lies in a rank's range, in the dropped tail, or is met
    again by a worker borrowing to fill its batches."""
    urls, _, _ = bad_dataset
    shards, counts = urls.split("::"), [16, 10, 20, 20, 20]
    seeds = range(6)
    last = {os.path.basename(epoch_layout(shards, counts, s, e, 2, 4).shards[-1])[:3] for s in seeds for e in (0, 1)}
    assert {"bad", "tru"} <= last  # some epochs drop part of a bad shard into the tail
    expected = {k: 2 * v for k, v in _expected().items()}
    for seed in seeds:
        assert _skip_counts(urls, seed, world=2, workers=0, epochs=2) == expected, f"seed {seed}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
def test_skip_counts_exact_with_workers(bad_dataset):
    urls, _, _ = bad_dataset
    expected = {k: 3 * v for k, v in _expected().items()}
    assert _skip_counts(urls, seed=1, world=2, workers=3, epochs=3) == expected


@pytest.mark.parametrize("stop_at", [10, 13])  # at the epoch boundary (the tail is inspected next) and inside
def test_resume_keeps_skip_counts_exact(bad_dataset, stop_at):
    urls, _, _ = bad_dataset
    cfg = pair_config(urls, max_image_pixels=50 * 50)
    for seed, rank in ((0, 0), (9, 1)):  # epochs whose dropped tail holds bad samples of this rank's slice
        def loader():
            return build_pair_loader(cfg, rank, 2, micro_batch_size=4, seed=seed)
        reference, first, resumed = loader(), loader(), loader()
        keys = [k for _, b in zip(range(20), reference) for k in b["keys"]]
        head = [k for _, b in zip(range(stop_at), first) for k in b["keys"]]
        resumed.load_state_dict(first.state_dict())
        tail = [k for _, b in zip(range(20 - stop_at), resumed) for k in b["keys"]]
        assert head + tail == keys and resumed.metrics() == reference.metrics(), f"seed {seed}"
