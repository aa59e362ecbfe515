"""Webdataset eval shards whose samples carry several captions (a list in the .json): one row per caption,
sharing the sample's key, image decoded once; single-caption samples read as before."""
from __future__ import annotations

import io
import json
import tarfile

from data_pipelines.config import EvalSetConfig
from data_pipelines.eval_sets import build_pair_eval_set
from data_pipelines.write_shards import write_shards
from tests.data.helpers import make_records, png_bytes


def rows_of(shards: str, **kw) -> list[tuple[str, str, int]]:
    eval_set = build_pair_eval_set(EvalSetConfig(name="s", shards=shards, batch_size=4), image_size=16, **kw)
    return [(k, c, int(label)) for b in eval_set for k, c, label in zip(b["keys"], b["captions"], b["labels"])]


def test_a_captions_list_gives_one_row_per_caption_sharing_the_key(tmp_path, monkeypatch):
    import data_pipelines.eval_sets as eval_sets

    records = make_records(str(tmp_path / "img"), 3)
    records[0]["captions"] = ["first a", "first b", "first c"]  # .txt keeps "caption number 0": the list wins
    records[2]["captions"] = ["third a", "third b"]
    result = write_shards(records, str(tmp_path / "shards"), shard_size=2)
    calls, real = [], eval_sets.decode_image
    monkeypatch.setattr(eval_sets, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert rows_of(result.pattern) == [
        ("s00000", "first a", 0), ("s00000", "first b", 0), ("s00000", "first c", 0),
        ("s00001", "caption number 1", 1), ("s00002", "third a", 2), ("s00002", "third b", 2)]
    assert len(calls) == 3  # one decode per image
    parts = [rows_of(result.pattern, rank=r, world_size=2) for r in (0, 1)]
    assert [k for k, _, _ in parts[0]] == ["s00000"] * 3 + ["s00002"] * 2  # an image's rows on one rank


def test_a_caption_list_in_the_json_caption_field(tmp_path):
    path = tmp_path / "multi-000000.tar"
    with tarfile.open(path, "w") as tar:
        for key, meta in [("a", {"caption": ["one", "", "two"], "label": 4}), ("b", {"caption": "single"})]:
            for name, data in [(f"{key}.png", png_bytes(1)), (f"{key}.json", json.dumps(meta).encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    eval_set = build_pair_eval_set(EvalSetConfig(name="s", shards=str(path)), image_size=16)
    rows = [(k, c, int(label)) for b in eval_set for k, c, label in zip(b["keys"], b["captions"], b["labels"])]
    assert rows == [("a", "one", 4), ("a", "two", 4), ("b", "single", -1)]
    assert eval_set.metrics() == {"data/eval/s/skipped/empty_caption": 1.0}
