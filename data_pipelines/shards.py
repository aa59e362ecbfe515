"""Reading raw samples from webdataset tar shards, and the per-shard sample counts the plan relies on.

A shard is read member by member with `tarfile` (seeking over skipped members of local files, streaming
`pipe:`/remote URLs through `webdataset.gopen`). Nothing is decoded here: a raw sample is a dict of
extension -> bytes holding only the members a pair sample uses (SAMPLE_MEMBERS); any other member (a huge
`.npy` next to the `.jpg`) is never read: seeked over in a local tar, skipped block by block in a stream.
Problems that are visible without decoding become `BadSample(reason)` entries that keep their position, so
the positions of all later samples stay the same on every read and every resume.
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
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # the image member: the first one present, in this order
# Image formats (by content, whatever the extension says) that are decoded; JPEG includes MPO. No other PIL
# plugin is ever tried (EPS/PS would run Ghostscript).
ALLOWED_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
TEXT_EXTENSIONS = ("txt", "json", "cls")
SAMPLE_MEMBERS = frozenset(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)  # the only members that are read
MAX_MEMBER_BYTES = {"image": 512 << 20, "text": 1 << 20}  # larger used members: BadSample("oversized_member")
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
        try:
            with open(path, encoding="utf-8") as f:
                count = json.load(f)["successes"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"successes={count!r}")
            return count
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"shard stats file {path}: no readable integer \"successes\" ({exc}); "
                             f"fix or delete it (without it the shard's keys are counted by a scan)") from None
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


class ShardUnreadable(Exception):
    """The shard cannot be opened as a tar at all (missing, no permission, not a tar)."""


_READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)


def read_samples(url: str, start: int, stop: int) -> list[Entry]:
    """Samples [start, stop) of a shard whose sample count is known: exactly stop-start entries, in tar
    key order. If the shard cannot be opened, all of them are BadSample("unreadable_shard"); samples lost
    because it ends early (cut, corrupt after some members, fewer keys than recorded) are
    BadSample("truncated_tar"). Samples before `start` are skipped unread."""
    entries: list[Entry] = []
    reason = "truncated_tar"
    try:
        for entry in _iter_groups(url, start, stop):
            entries.append(entry)
    except ShardUnreadable:
        reason = "unreadable_shard"
    except _READ_ERRORS:
        pass
    return entries + [BadSample(f"{url}#{i}", reason) for i in range(start + len(entries), stop)]


def iter_samples(url: str, start: int = 0) -> Iterator[Entry]:
    """All samples of a shard from position `start`, streamed (count unknown); a shard that cannot be
    opened gives one BadSample("unreadable_shard"), a read error later ends it with one
    BadSample("truncated_tar")."""
    read = 0
    try:
        for entry in _iter_groups(url, start, sys.maxsize):
            read += 1
            yield entry
    except ShardUnreadable:
        yield BadSample(f"{url}#{start}", "unreadable_shard")
    except _READ_ERRORS:
        yield BadSample(f"{url}#{start + read}", "truncated_tar")


def _open_tar(url: str) -> tarfile.TarFile:
    try:
        if is_remote(url):
            return tarfile.open(fileobj=gopen(url, "rb"), mode="r|*")
        return tarfile.open(url, "r:")  # random access: skipped members are seeked over, not read
    except _READ_ERRORS as exc:
        raise ShardUnreadable(f"{url}: {exc}") from exc


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
                _add_member(tf, member, sample)
        if sample is not None:
            yield _finish(sample)


def _add_member(tf: tarfile.TarFile, member: tarfile.TarInfo, sample: RawSample) -> None:
    """Read a member into the sample if the sample uses it; pickle members are flagged by name and never
    read, oversized ones flagged by their header size; members no sample uses are not read at all."""
    _, ext = base_plus_ext(member.name)
    ext = (ext or "").lower()
    if ext in PICKLE_EXTENSIONS:
        sample[ext] = b""
    elif ext in SAMPLE_MEMBERS:
        limit = MAX_MEMBER_BYTES["text" if ext in TEXT_EXTENSIONS else "image"]
        if member.size > limit:
            sample["__oversized__"] = f"{member.name}: {member.size} bytes > {limit}"
        else:
            sample[ext] = tf.extractfile(member).read()


def _finish(sample: RawSample) -> Entry:
    if PICKLE_EXTENSIONS.intersection(sample):
        return BadSample(sample["__key__"], "pickle_member")
    if "__oversized__" in sample:
        return BadSample(sample["__key__"], "oversized_member")
    return sample
