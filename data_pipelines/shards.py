"""Reading raw samples from webdataset tar shards, and the per-shard sample counts the plan relies on.

A shard is read member by member with `tarfile` (seeking over skipped members of local files, streaming
`pipe:`/remote URLs through `webdataset.gopen`). Nothing is decoded here: a raw sample is a dict of
extension -> bytes. Problems that are visible without decoding become `BadSample(reason)` entries that keep
their position, so the positions of all later samples stay the same on every read and every resume.
"""
from __future__ import annotations

import json
import os
import sys
import tarfile
from dataclasses import dataclass
from typing import Iterator, Union

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from data_pipelines.config import is_remote

PICKLE_EXTENSIONS = frozenset({"pyd", "pickle", "pkl"})  # never unpickled: loading them executes code
STATS_SUFFIX = "_stats.json"  # img2dataset's per-shard stats file; our writer writes the same


@dataclass(frozen=True)
class BadSample:
    key: str
    reason: str


RawSample = dict  # {"__key__": str, "__url__": str, "<ext>": bytes, ...}
Entry = Union[RawSample, BadSample]


def stats_path(shard: str) -> str:
    return os.path.splitext(shard)[0] + STATS_SUFFIX


def shard_sample_count(shard: str) -> int:
    """Samples in a local shard: from its `<stem>_stats.json` ("successes", as img2dataset and our writer
    record it), else by scanning the tar headers (slow for big shards; write stats to avoid it)."""
    path = stats_path(shard)
    if os.path.isfile(path):
        with open(path) as f:
            return int(json.load(f)["successes"])
    keys = 0
    last = None
    try:
        with tarfile.open(shard, "r:") as tf:
            for member in tf:
                key = _member_key(member)
                if key is not None and key != last:
                    keys, last = keys + 1, key
    except (tarfile.TarError, OSError, EOFError):
        pass  # a truncated shard counts what is readable
    return keys


def _member_key(member: tarfile.TarInfo) -> str | None:
    if not member.isfile():
        return None
    prefix, _ = base_plus_ext(member.name)
    return prefix


def read_samples(url: str, start: int, stop: int) -> list[Entry]:
    """Samples [start, stop) of a shard whose sample count is known: exactly stop-start entries, in tar
    key order. Samples lost to a truncated or short shard become BadSample("truncated_tar"), those of an
    unreadable shard BadSample("unreadable_shard"). Samples before `start` are skipped unread."""
    entries: list[Entry] = []
    reason = "truncated_tar"
    try:
        for entry in _iter_groups(url, start, stop):
            entries.append(entry)
    except (tarfile.TarError, OSError, EOFError, ValueError):
        if not entries and _unopenable(url):
            reason = "unreadable_shard"
    return entries + [BadSample(f"{url}#{i}", reason) for i in range(start + len(entries), stop)]


def iter_samples(url: str, start: int = 0) -> Iterator[Entry]:
    """All samples of a shard from position `start`, streamed (count unknown); a read error ends the
    shard with one BadSample("truncated_tar" / "unreadable_shard")."""
    read = 0
    try:
        for entry in _iter_groups(url, start, sys.maxsize):
            read += 1
            yield entry
    except (tarfile.TarError, OSError, EOFError, ValueError):
        reason = "unreadable_shard" if not read and _unopenable(url) else "truncated_tar"
        yield BadSample(f"{url}#{start + read}", reason)


def _unopenable(url: str) -> bool:
    return not is_remote(url) and not os.path.isfile(url)


def _open_tar(url: str) -> tarfile.TarFile:
    if is_remote(url):
        return tarfile.open(fileobj=gopen(url, "rb"), mode="r|*")
    return tarfile.open(url, "r:")  # random access: skipped members are seeked over, not read


def _iter_groups(url: str, start: int, stop: int) -> Iterator[Entry]:
    """Group consecutive members by key; yield entries for positions start..stop-1."""
    position, key, sample = -1, None, None
    with _open_tar(url) as tf:
        for member in tf:
            member_key = _member_key(member)
            if member_key is None:
                continue
            if member_key != key:
                if sample is not None:
                    yield _finish(sample)
                position, key, sample = position + 1, member_key, None
                if position >= stop:
                    return
                if position >= start:
                    sample = {"__key__": member_key, "__url__": url}
            if sample is not None:
                _, ext = base_plus_ext(member.name)
                ext = (ext or "").lower()
                # pickle members are flagged by name and never even read
                sample[ext] = b"" if ext in PICKLE_EXTENSIONS else tf.extractfile(member).read()
        if sample is not None:
            yield _finish(sample)


def _finish(sample: RawSample) -> Entry:
    if PICKLE_EXTENSIONS.intersection(sample):
        return BadSample(sample["__key__"], "pickle_member")
    return sample
