"""Decode + transform throughput of our pair pipeline vs open_clip's webdataset training pipeline.

    .venv/bin/python -m bench.data.bench_pair_pipeline --samples 1024 --workers 2 --image-size 224

Both read the same generated JPEG shards (web-photo sized, 500x375 unless --source-size) with the same workers, batch size and
resolution, without augmentation and without tokenisation (open_clip gets an identity tokenizer), for one
epoch after a warm-up batch. Prints samples/s of each and the ratio. Measures; never fails on speed.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from argparse import Namespace

import numpy as np
from PIL import Image

from data_pipelines.config import DataConfig, PairSourceConfig
from data_pipelines.pairs import build_pair_loader
from data_pipelines.write_shards import write_shards


def make_shards(folder: str, samples: int, per_shard: int, source_size: tuple[int, int]) -> str:
    rng = np.random.default_rng(0)
    records = []
    for i in range(samples):
        base = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)  # smooth, photo-like after upscaling
        image = Image.fromarray(base).resize(source_size, Image.BICUBIC)
        path = os.path.join(folder, f"{i:06d}.jpg")
        image.save(path, quality=90)
        records.append({"image": path, "caption": f"a photo number {i}"})
    return write_shards(records, os.path.join(folder, "shards"), shard_size=per_shard).pattern


def run_ours(urls: str, workers: int, batch: int, size: int) -> tuple[int, float]:
    cfg = DataConfig(sources=[PairSourceConfig(urls=urls)], image_size=size, num_workers=workers)
    loader = build_pair_loader(cfg, 0, 1, batch, seed=0)
    return _time(iter(loader), loader.batches_per_epoch, lambda b: len(b["keys"]))


def run_open_clip(urls: str, workers: int, batch: int, size: int, samples: int) -> tuple[int, float]:
    if importlib.util.find_spec("pandas") is None:
        # open_clip_train.data imports pandas for its CSV dataset only; the webdataset path never uses it
        stub = types.ModuleType("pandas")
        stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = stub
    import open_clip
    import open_clip_train.data as oc_data

    # open_clip_train 3.3's grouping chokes on the empty end-of-shard marker webdataset 1.x yields
    # (KeyError 'fname'); drop the markers so its pipeline runs unchanged otherwise
    group = oc_data.group_by_keys_nothrow
    oc_data.group_by_keys_nothrow = lambda files, **kw: group((f for f in files if f), **kw)

    args = Namespace(train_data=urls, val_data=None, train_num_samples=samples, dataset_resampled=False,
                     train_data_upsampling_factors=None, seed=0, batch_size=batch, workers=workers,
                     world_size=1)
    preprocess = open_clip.image_transform(size, is_train=False)
    info = oc_data.get_wds_dataset(args, preprocess, is_train=True, floor=True, tokenizer=lambda text: [text])
    return _time(iter(info.dataloader), info.dataloader.num_batches, lambda b: len(b[0]))


def _time(batches, count: int, size_of) -> tuple[int, float]:
    next(batches)  # warm-up: worker start and first chunk
    start, seen = time.perf_counter(), 0
    for _ in range(count - 1):
        seen += size_of(next(batches))
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", default="500x375", help="WxH of the JPEGs in the shards")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians reported")
    args = parser.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as folder:
        size = tuple(int(v) for v in args.source_size.split("x"))
        urls = make_shards(folder, args.samples, args.per_shard, size)
        for _ in range(args.repeats):  # alternate so that load changes on a shared machine hit both
            seen, seconds = run_ours(urls, args.workers, args.batch_size, args.image_size)
            ours.append(seen / seconds)
            seen, seconds = run_open_clip(urls, args.workers, args.batch_size, args.image_size, args.samples)
            theirs.append(seen / seconds)
    print(json.dumps({"ours_samples_per_s": [round(r, 1) for r in ours],
                      "open_clip_samples_per_s": [round(r, 1) for r in theirs],
                      "median_ratio": round(float(np.median(ours) / np.median(theirs)), 2), **vars(args)}, indent=1))


if __name__ == "__main__":
    main()
