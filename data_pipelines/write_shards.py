"""Write (image, caption[, label]) records into webdataset shards with per-shard sample counts.

    python -m data_pipelines.write_shards --out shards/ --images photos/          # captions in photo.txt
    python -m data_pipelines.write_shards --out shards/ --csv pairs.csv --shard-size 5000 --processes 8
    python -m data_pipelines.write_shards --out shards/ --jsonl pairs.jsonl      # or --parquet (pyarrow)

Layout (img2dataset's, so both kinds of shards load the same way): `<prefix>-NNNNNN.tar` holding
`<key>.<jpg|png|webp>`, `<key>.txt` (caption), `<key>.json` (caption, label, source, extra fields) and
`<key>.cls` (label), plus `<prefix>-NNNNNN_stats.json` with "successes" = samples in the shard.
Restartable: a shard is complete when its stats file exists; complete shards are skipped, partial ones are
written under a `.tmp` name and renamed when whole.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from PIL import Image, UnidentifiedImageError
from webdataset import TarWriter

from data_pipelines.shards import ALLOWED_IMAGE_FORMATS

IMAGE_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
MANIFEST = "writer_manifest.json"


@dataclass(frozen=True)
class WriteResult:
    pattern: str  # brace pattern of all shards, for data.sources[].urls
    shards: list[str]
    written: int  # samples in the shards
    failed: dict[str, int]  # records not written, by reason
    skipped_shards: int  # shards already complete from an earlier run


def shard_name(out_dir: str, prefix: str, index: int) -> str:
    return os.path.join(out_dir, f"{prefix}-{index:06d}.tar")


def write_shards(records: Sequence[dict[str, Any]], out_dir: str, shard_size: int = 1000,
                 processes: int = 1, prefix: str = "shard") -> WriteResult:
    """Write `records` ({"image": path, "caption": str, optional "label": int, optional "key": str (no
    dots; default: the record's index), any extra fields go into the .json member})."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not records:
        raise ValueError("no records to write")
    os.makedirs(out_dir, exist_ok=True)
    num_shards = -(-len(records) // shard_size)
    _check_manifest(out_dir, records, shard_size, prefix, num_shards)
    todo = [i for i in range(num_shards) if not os.path.isfile(_stats_name(shard_name(out_dir, prefix, i)))]
    jobs = [(shard_name(out_dir, prefix, i), records[i * shard_size:(i + 1) * shard_size], i * shard_size)
            for i in todo]
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(processes, len(jobs))) as pool:
            list(pool.map(_write_one_shard, *zip(*jobs)))
    else:
        for job in jobs:
            _write_one_shard(*job)
    shards = [shard_name(out_dir, prefix, i) for i in range(num_shards)]
    written, failed = 0, Counter()
    for shard in shards:
        with open(_stats_name(shard)) as f:
            stats = json.load(f)
        written += stats["successes"]
        failed.update(stats["failures"])
    pattern = os.path.join(out_dir, f"{prefix}-{{{0:06d}..{num_shards - 1:06d}}}.tar")
    return WriteResult(pattern, shards, written, dict(failed), num_shards - len(todo))


def _stats_name(shard: str) -> str:
    return shard[: -len(".tar")] + "_stats.json"


def _check_manifest(out_dir: str, records: Sequence[dict], shard_size: int, prefix: str, num_shards: int) -> None:
    digest = hashlib.sha256(json.dumps(list(records), sort_keys=True, default=str).encode()).hexdigest()
    manifest = {"records": len(records), "records_sha256": digest, "shard_size": shard_size,
                "prefix": prefix, "num_shards": num_shards}
    path = os.path.join(out_dir, f"{prefix}-{MANIFEST}")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != manifest:
            raise SystemExit(f"{out_dir} holds shards of a different input or shard size ({path}); "
                             f"use an empty output directory or the same arguments to continue that run")
        return
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)


def _write_one_shard(path: str, records: Sequence[dict[str, Any]], first_index: int) -> None:
    failures: Counter = Counter()
    successes = 0
    tmp = path + ".tmp"
    with TarWriter(tmp, encoder=False, mtime=0.0) as sink:  # fixed mtime: reproducible bytes
        for offset, record in enumerate(records):
            sample = _sample(record, str(record.get("key") or f"{first_index + offset:09d}"))
            if isinstance(sample, str):
                failures[sample] += 1
                continue
            sink.write(sample)
            successes += 1
    os.replace(tmp, path)
    stats = {"successes": successes, "failed": sum(failures.values()), "failures": dict(failures),
             "count": len(records)}
    with open(_stats_name(path) + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(_stats_name(path) + ".tmp", _stats_name(path))  # written last: marks the shard complete


def _sample(record: dict[str, Any], key: str) -> dict[str, bytes] | str:
    """The tar members of one record, or the reason it cannot be written."""
    image_path, caption = str(record.get("image") or ""), record.get("caption")
    if "." in key or "/" in key:
        return "bad_key"  # webdataset splits member names at the first dot
    ext = IMAGE_SUFFIXES.get(os.path.splitext(image_path)[1].lower())
    if ext is None:
        return "not_an_image"
    if not isinstance(caption, str) or not caption.strip():
        return "missing_caption"
    try:
        with open(image_path, "rb") as f:
            data = f.read()
        with Image.open(image_path, formats=ALLOWED_IMAGE_FORMATS) as probe:
            probe.size  # header parses: a real image of a format the loaders decode
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return "unreadable_image"
    meta = {k: v for k, v in record.items() if k not in ("image", "key")}
    meta.setdefault("source", image_path)
    sample = {"__key__": key, ext: data, "txt": caption.strip().encode(), "json": json.dumps(meta).encode()}
    if record.get("label") is not None and str(record["label"]) != "":
        try:
            sample["cls"] = str(int(record["label"])).encode()
        except (TypeError, ValueError):
            return "bad_label"
    return sample


def records_from_folder(folder: str) -> list[dict[str, Any]]:
    """Images under `folder` (sorted, recursive) with the caption in the same-stem .txt file."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                continue
            txt = os.path.join(root, stem + ".txt")
            caption = open(txt, encoding="utf-8").read() if os.path.isfile(txt) else None
            out.append({"image": os.path.join(root, name), "caption": caption})
    return out


def records_from_table(rows: Iterable[dict[str, Any]], base_dir: str, image_col: str, caption_col: str,
                       label_col: Optional[str]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        record = {k: v for k, v in row.items() if k not in (image_col, caption_col, label_col)}
        image = str(row.get(image_col) or "")
        record["image"] = image if os.path.isabs(image) else os.path.join(base_dir, image)
        record["caption"] = row.get(caption_col)
        if label_col and row.get(label_col) not in (None, ""):
            record["label"] = int(row[label_col])
        out.append(record)
    return out


def read_parquet_rows(path: str) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SystemExit("--parquet needs pyarrow, which is not installed: `pip install pyarrow`, or convert "
                         "the table to CSV/JSONL") from None
    return pq.read_table(path).to_pylist()


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.write_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images with captions in same-stem .txt files")
    source.add_argument("--csv", help="CSV with a header; image paths relative to the CSV's folder")
    source.add_argument("--jsonl", help="one JSON object per line; image paths relative to the file's folder")
    source.add_argument("--parquet", help="parquet table (needs pyarrow)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--prefix", default="shard")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args(argv)
    records = _records(args)
    result = write_shards(records, args.out, args.shard_size, args.processes, args.prefix)
    print(json.dumps({"urls": result.pattern, "shards": len(result.shards), "samples": result.written,
                      "failed": result.failed, "already_complete": result.skipped_shards}, indent=1))


def _records(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.images:
        if not os.path.isdir(args.images):
            raise SystemExit(f"--images {args.images}: not a folder")
        return records_from_folder(args.images)
    path = args.csv or args.jsonl or args.parquet
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: file not found")
    if args.csv:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif args.jsonl:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        rows = read_parquet_rows(path)
    if rows and args.image_column not in rows[0]:
        raise SystemExit(f"{path}: no column {args.image_column!r} (columns: {sorted(rows[0])}); "
                         f"use --image-column")
    return records_from_table(rows, os.path.dirname(os.path.abspath(path)), args.image_column,
                              args.caption_column, args.label_column)


if __name__ == "__main__":
    sys.exit(main())
