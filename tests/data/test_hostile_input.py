"""Hostile pair samples never crash a run: each is skipped and counted by reason, on the real loader."""
from __future__ import annotations

import io
import json
import os
import tarfile
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from data_pipelines.config import EvalSetConfig
from data_pipelines.decode import decode_image
from data_pipelines.skip import SkipSample
from data_pipelines.eval_sets import build_pair_eval_set
from data_pipelines.pairs import build_pair_loader
from data_pipelines.shards import iter_samples, read_samples
from tests.data.helpers import EPS, gradient_16bit, pair_config, png_bytes, png_of, write_shard

NESTED = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000  # json.loads: RecursionError


HOSTILE = {  # key -> (sample members, the counter it must land in)
    "nestedjson": ({"png": png_bytes(1), "txt": b"ok", "json": NESTED}, "bad_json"),
    "hugelabel": ({"png": png_bytes(2), "txt": b"ok", "json": json.dumps({"label": 2**70}).encode()}, "bad_label"),
    "hugecls": ({"png": png_bytes(3), "txt": b"ok", "cls": b"99999999999999999999999"}, "bad_label"),
    "negativelabel": ({"png": png_bytes(4), "txt": b"ok", "json": b'{"label": -5}'}, "bad_label"),
    "tallimage": ({"png": png_of(Image.new("RGB", (2, 400))), "txt": b"ok"}, "extreme_aspect_ratio"),
    "wideimage": ({"png": png_of(Image.new("RGB", (300, 1))), "txt": b"ok"}, "extreme_aspect_ratio"),
    "epsimage": ({"jpg": EPS, "txt": b"ok"}, "unsupported_image_format"),
}


@pytest.fixture(scope="module")
def hostile_shards(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("hostile")
    sixteen, _ = gradient_16bit()
    samples = [dict(members, __key__=key) for key, (members, _) in HOSTILE.items()]
    samples += [{"__key__": "sixteenbit", "png": sixteen, "txt": b"a 16-bit gradient"},
                {"__key__": "surrogate", "png": png_bytes(9), "json": b'{"caption": "bad \\ud800 text", "label": 3}'}]
    samples += [{"__key__": f"good{i:02d}", "png": png_bytes(20 + i), "txt": b"fine"} for i in range(7)]
    write_shard(str(root / "hostile-0.tar"), samples)
    expected: dict = {}
    for _, reason in HOSTILE.values():
        expected[f"data/skipped/{reason}"] = expected.get(f"data/skipped/{reason}", 0) + 1
    return str(root / "hostile-0.tar"), expected


def test_training_loader_skips_and_counts_each_hostile_sample(hostile_shards, fake_ghostscript):
    url, expected = hostile_shards
    loader = build_pair_loader(pair_config(url), 0, 1, micro_batch_size=1, seed=0)
    assert loader.batches_per_epoch == 16
    batches = [b for _, b in zip(range(32), loader)]  # two epochs
    keys = [b["keys"][0] for b in batches]
    metrics = loader.metrics()
    assert {k: v for k, v in metrics.items() if k.startswith("data/skipped/")} == {
        k: 2.0 * v for k, v in expected.items()}
    assert not set(keys) & set(HOSTILE)
    assert {"sixteenbit", "surrogate"} <= set(keys)
    surrogate = next(b for b in batches if b["keys"][0] == "surrogate")
    assert surrogate["captions"] == ["bad ? text"] and surrogate["captions"][0].encode("utf-8")
    assert not os.path.exists(fake_ghostscript)  # the EPS never reached PIL's EPS plugin


def test_eval_reader_counts_the_same(hostile_shards, fake_ghostscript):
    url, expected = hostile_shards
    eval_set = build_pair_eval_set(EvalSetConfig(name="h", shards=url, batch_size=4), image_size=16)
    keys = [k for batch in eval_set for k in batch["keys"]]
    assert len(keys) == 9 and not set(keys) & set(HOSTILE)
    assert eval_set.metrics() == {k.replace("data/", "data/eval/h/"): float(v) for k, v in expected.items()}
    assert not os.path.exists(fake_ghostscript)


def test_eps_bytes_are_never_decoded(tmp_path, fake_ghostscript):
    with pytest.raises(SkipSample) as skip:
        decode_image(EPS, max_pixels=10**6)
    assert skip.value.reason == "unsupported_image_format" and "EPS" in str(skip.value)
    assert not os.path.exists(fake_ghostscript)


def test_allowed_formats_decode():
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):
        out = io.BytesIO()
        Image.new("RGB", (12, 10), (200, 30, 60)).save(out, format=fmt)
        assert decode_image(out.getvalue(), max_pixels=10**6).size == (12, 10), fmt
    tiff = io.BytesIO()
    Image.new("RGB", (12, 10)).save(tiff, format="TIFF")
    with pytest.raises(SkipSample, match="unsupported_image_format"):
        decode_image(tiff.getvalue(), max_pixels=10**6)


def test_16bit_greyscale_is_scaled_not_clipped():
    data, high_bytes = gradient_16bit()
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rgb = np.asarray(decode_image(data, max_pixels=10**6))
    assert rgb.shape == (16, 256, 3)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], high_bytes)  # 0..255 across, not 0 then 255 from x=1


def test_aspect_ratio_limit_is_configurable():
    tall = png_of(Image.new("RGB", (2, 400)))
    with pytest.raises(SkipSample, match="extreme_aspect_ratio"):
        decode_image(tall, max_pixels=10**6)
    assert decode_image(tall, max_pixels=10**6, max_aspect_ratio=200).size == (2, 400)


def test_unused_member_is_never_read(tmp_path):
    """A 50 MB `.npy` next to the image and caption: neither loader path brings it into memory."""
    path = str(tmp_path / "big-0.tar")
    write_shard(path, [{"__key__": "a", "png": png_bytes(1), "txt": b"x", "npy": bytes(50 << 20)},
                       {"__key__": "b", "png": png_bytes(2), "txt": b"y"}])
    for read in (lambda: read_samples(path, 0, 2), lambda: list(iter_samples(f"pipe:cat {path}"))):
        tracemalloc.start()
        entries = read()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert [set(e) - {"__key__", "__url__"} for e in entries] == [{"png", "txt"}, {"png", "txt"}]
        assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MiB while reading"


def test_oversized_used_member_is_skipped_unread(tmp_path):
    path = str(tmp_path / "caption-0.tar")
    write_shard(path, [{"__key__": "a", "png": png_bytes(1), "txt": b"x" * (2 << 20)},
                       {"__key__": "b", "png": png_bytes(2), "txt": b"y"}])
    entries = read_samples(path, 0, 2)
    assert getattr(entries[0], "reason", None) == "oversized_member" and entries[1]["txt"] == b"y"


def test_unreadable_shard_versus_truncated_tar(tmp_path):
    garbage, missing, cut = (str(tmp_path / n) for n in ("garbage-0.tar", "missing-0.tar", "cut-0.tar"))
    with open(garbage, "wb") as f:
        f.write(os.urandom(4096))
    write_shard(cut, [{"__key__": f"c{i}", "png": png_bytes(i), "txt": b"t"} for i in range(6)])
    with tarfile.open(cut) as tf:
        offset = next(m for m in tf.getmembers() if m.name == "c3.png").offset_data
    with open(cut, "r+b") as f:
        f.truncate(offset + 5)
    reasons = lambda url, a, b: [getattr(e, "reason", "ok") for e in read_samples(url, a, b)]  # noqa: E731
    assert reasons(garbage, 0, 4) == ["unreadable_shard"] * 4
    assert reasons(missing, 2, 5) == ["unreadable_shard"] * 3
    assert reasons(cut, 0, 6) == ["ok"] * 3 + ["truncated_tar"] * 3
    assert reasons(cut, 4, 6) == ["truncated_tar"] * 2  # opened fine, ended before sample 4
    assert [e.reason for e in iter_samples(garbage)] == ["unreadable_shard"]
    assert [getattr(e, "reason", "ok") for e in iter_samples(cut)] == ["ok"] * 3 + ["truncated_tar"]


def test_writer_refuses_eps_and_non_integer_labels(tmp_path):
    from data_pipelines.write_shards import write_shards

    (tmp_path / "a.png").write_bytes(EPS)
    (tmp_path / "b.png").write_bytes(png_bytes(1))
    (tmp_path / "c.png").write_bytes(png_bytes(2))
    records = [{"image": str(tmp_path / "a.png"), "caption": "eps"},
               {"image": str(tmp_path / "b.png"), "caption": "cat", "label": "cat"},
               {"image": str(tmp_path / "c.png"), "caption": "fine", "label": 3}]
    result = write_shards(records, str(tmp_path / "out"), shard_size=10)
    assert result.written == 1 and result.failed == {"unreadable_image": 1, "bad_label": 1}
