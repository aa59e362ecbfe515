"""Held-out sets: CSV and shard readers, deterministic order, rank split, zero-shot files."""
from __future__ import annotations

import csv
import os

from data_pipelines.config import EvalSetConfig
from data_pipelines.eval_sets import build_pair_eval_set
from tests.data.helpers import make_records


def test_csv_set_with_labels_split_across_ranks(tmp_path):
    records = make_records(str(tmp_path / "img"), 11)
    with open(tmp_path / "set.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for r in records:
            writer.writerow([os.path.relpath(r["image"], tmp_path), r["caption"], r["label"]])
        writer.writerow(["img/gone.png", "a missing file", "1"])
    (tmp_path / "classes.txt").write_text("\n".join(f"class {i}" for i in range(7)) + "\n")
    (tmp_path / "templates.txt").write_text("a photo of {}.\nan image of {}.\n")
    cfg = EvalSetConfig(name="csv", csv=str(tmp_path / "set.csv"), batch_size=4,
                        classnames_file=str(tmp_path / "classes.txt"), templates_file=str(tmp_path / "templates.txt"))
    whole = build_pair_eval_set(cfg, image_size=16)
    batches = list(whole)
    assert [len(b["keys"]) for b in batches] == [4, 4, 3]
    assert [c for b in batches for c in b["captions"]] == [f"caption number {i}" for i in range(11)]
    assert [label for b in batches for label in b["labels"].tolist()] == [i % 7 for i in range(11)]
    assert whole.metrics() == {"data/eval/csv/skipped/missing_image": 1.0}
    assert whole.classnames[3] == "class 3" and whole.templates == ["a photo of {}.", "an image of {}."]
    parts = [[k for b in build_pair_eval_set(cfg, 16, rank=r, world_size=2) for k in b["keys"]] for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == sorted(k for b in batches for k in b["keys"])
    assert not set(parts[0]) & set(parts[1])
    assert [k for b in build_pair_eval_set(cfg, 16) for k in b["keys"]] == [k for b in batches for k in b["keys"]]
