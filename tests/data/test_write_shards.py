"""The shard writer: inputs, counts sidecars, restart after interruption."""
from __future__ import annotations

import csv
import hashlib
import json
import os

import pytest

from data_pipelines.shards import read_samples, shard_sample_count
from data_pipelines.write_shards import main, write_shards
from tests.data.helpers import make_records


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_csv_input_counts_and_failures(tmp_path, capsys):
    records = make_records(str(tmp_path / "img"), 9)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "label"])
        for r in records:
            writer.writerow([os.path.relpath(r["image"], tmp_path), r["caption"], r["label"]])
        writer.writerow(["img/missing.png", "no such file", ""])
        writer.writerow([os.path.relpath(records[0]["image"], tmp_path), "", ""])
    main(["--csv", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "out"), "--shard-size", "4",
          "--processes", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 9 and summary["shards"] == 3
    assert summary["failed"] == {"unreadable_image": 1, "missing_caption": 1}
    counts = [shard_sample_count(str(tmp_path / "out" / f"shard-{i:06d}.tar")) for i in range(3)]
    assert counts == [4, 4, 1]
    first = read_samples(str(tmp_path / "out" / "shard-000000.tar"), 0, 4)
    assert [s["txt"].decode() for s in first] == [f"caption number {i}" for i in range(4)]
    assert first[1]["cls"] == b"1" and "png" in first[1]


def test_folder_and_jsonl_inputs(tmp_path, capsys):
    records = make_records(str(tmp_path / "img"), 5)
    for r in records[:4]:
        with open(r["image"][:-4] + ".txt", "w") as f:
            f.write(r["caption"])
    main(["--images", str(tmp_path / "img"), "--out", str(tmp_path / "a")])
    assert json.loads(capsys.readouterr().out)["failed"] == {"missing_caption": 1}
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"image": os.path.basename(r["image"]), "caption": r["caption"], "extra": 7}) + "\n")
    os.replace(tmp_path / "pairs.jsonl", tmp_path / "img" / "pairs.jsonl")
    main(["--jsonl", str(tmp_path / "img" / "pairs.jsonl"), "--out", str(tmp_path / "b")])
    assert json.loads(capsys.readouterr().out)["samples"] == 5
    meta = json.loads(read_samples(str(tmp_path / "b" / "shard-000000.tar"), 0, 1)[0]["json"])
    assert meta["extra"] == 7


def test_parquet_without_pyarrow_says_so(tmp_path):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow installed")
    except ImportError:
        pass
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(SystemExit, match="needs pyarrow"):
        main(["--parquet", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o")])


def test_restart_keeps_complete_shards_and_finishes_the_rest(tmp_path):
    records = make_records(str(tmp_path / "img"), 20)
    out = str(tmp_path / "out")
    first = write_shards(records, out, shard_size=4)
    reference = {p: _digest(p) for p in first.shards}
    # the state an interrupted run leaves: shards 0-2 complete, shard 3 written but not marked complete,
    # shard 4 half-written under its temporary name
    kept = {p: os.stat(p).st_mtime_ns for p in first.shards[:3]}
    os.remove(first.shards[3][:-4] + "_stats.json")
    os.remove(first.shards[4][:-4] + "_stats.json")
    with open(first.shards[4], "rb") as f:
        partial = f.read()[:1000]
    os.remove(first.shards[4])
    with open(first.shards[4] + ".tmp", "wb") as f:
        f.write(partial)
    again = write_shards(records, out, shard_size=4, processes=2)
    assert again.skipped_shards == 3 and again.written == 20
    assert {p: os.stat(p).st_mtime_ns for p in first.shards[:3]} == kept
    assert {p: _digest(p) for p in again.shards} == reference  # byte-identical to the uninterrupted run
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_restart_with_other_input_is_refused(tmp_path):
    records = make_records(str(tmp_path / "img"), 6)
    write_shards(records, str(tmp_path / "out"), shard_size=4)
    with pytest.raises(SystemExit, match="different input or shard size"):
        write_shards(records, str(tmp_path / "out"), shard_size=3)


@pytest.mark.slow
def test_killed_writer_resumes_to_identical_shards(tmp_path):
    import glob
    import signal
    import subprocess
    import sys
    import time

    records = make_records(str(tmp_path / "img"), 240)
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps({"image": r["image"], "caption": r["caption"]}) + "\n")
    command = [sys.executable, "-m", "data_pipelines.write_shards", "--jsonl", str(tmp_path / "pairs.jsonl"),
               "--shard-size", "1"]
    reference = str(tmp_path / "ref")
    subprocess.run(command + ["--out", reference], check=True, capture_output=True)
    out = str(tmp_path / "out")
    proc = subprocess.Popen(command + ["--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not glob.glob(os.path.join(out, "*_stats.json")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(glob.glob(os.path.join(out, "*_stats.json")))
    assert done_before < 240, "the writer finished before it was killed: nothing was interrupted"
    finished = subprocess.run(command + ["--out", out], check=True, capture_output=True, text=True)
    assert json.loads(finished.stdout)["already_complete"] == done_before >= 1
    names = sorted(n for n in os.listdir(reference) if n.endswith((".tar", "_stats.json")))
    assert sorted(n for n in os.listdir(out) if not n.endswith("manifest.json")) == names
    assert all(_digest(os.path.join(out, n)) == _digest(os.path.join(reference, n)) for n in names)
