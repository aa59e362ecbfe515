"""Conversation sources: InternVL-Chat meta JSON (JSONL annotations) and LLaVA JSON lists.

Annotations are not held in memory: a JSONL file is indexed once by byte offset and each record is read
when the loader reaches it, so a 4M-sample mixture costs one offset per line.
"""
from __future__ import annotations

import json
import os
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    root: str  # image paths are relative to it
    annotation: str
    repeat_time: float = 1.0
    max_dynamic_patch: Optional[int] = None  # per-dataset override of the config's max tiles


def read_meta(meta_path: str) -> list[DatasetSpec]:
    """Parse an InternVL-Chat meta JSON {name: {root, annotation, repeat_time, max_dynamic_patch, ...}}."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise ValueError(f"cannot read SFT meta file {meta_path}: {e}") from e
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"SFT meta file {meta_path} must be a non-empty JSON object {{name: {{root, annotation}}}}")
    base = os.path.dirname(os.path.abspath(meta_path))
    return [_dataset_spec(meta_path, base, name, entry) for name, entry in meta.items()]


def _dataset_spec(meta_path: str, base: str, name: str, entry: Any) -> DatasetSpec:
    """One meta entry, type-checked at start-up (a wrong type must not surface as a crash mid-epoch)."""
    where = f"SFT meta file {meta_path}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object {{root, annotation, ...}}")
    missing = [k for k in ("root", "annotation") if not isinstance(entry.get(k), str)]
    if missing:
        raise ValueError(f"{where} lacks {missing} (paths as strings)")
    repeat, patches = entry.get("repeat_time", 1.0), entry.get("max_dynamic_patch")
    if isinstance(repeat, bool) or not isinstance(repeat, (int, float)) or not 0 <= repeat < 1e6:
        raise ValueError(f"{where}: repeat_time must be a number >= 0, got {repeat!r}")
    if patches is not None and (isinstance(patches, bool) or not isinstance(patches, int) or patches < 1):
        raise ValueError(f"{where}: max_dynamic_patch must be an integer >= 1, got {patches!r}")
    return DatasetSpec(name=name, root=os.path.join(base, entry["root"]),
                       annotation=os.path.join(base, entry["annotation"]), repeat_time=float(repeat),
                       max_dynamic_patch=patches)


def _jsonl_offsets(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets of the non-blank lines, and of the blank ones (to name true line numbers in messages)."""
    offsets, blanks, pos = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            (offsets if line.strip() else blanks).append(pos)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(blanks, dtype=np.int64)


def _repeat(n: int, repeat_time: float, name: str) -> np.ndarray:
    """Line indices after InternVL's repeat_time: whole copies plus a fixed random fraction."""
    whole, frac = int(repeat_time), repeat_time - int(repeat_time)
    parts = [np.arange(n, dtype=np.int64)] * whole
    if frac > 0:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        parts.append(np.sort(rng.choice(n, size=int(round(frac * n)), replace=False)).astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class ConversationSource:
    """All records of a mixture, addressable by a global index (dataset, line) after repetition."""

    def __init__(self, specs: list[DatasetSpec], inline: Optional[list[list[dict[str, Any]]]] = None):
        self.specs = specs
        self._inline = inline  # LLaVA JSON: the parsed list per dataset (it is one JSON document anyway)
        self._offsets: list[np.ndarray] = []
        self._blanks: list[np.ndarray] = []
        parts = []
        for d, spec in enumerate(specs):
            if inline is not None:
                n = len(inline[d])
            else:
                if not os.path.isfile(spec.annotation):
                    raise ValueError(f"SFT dataset {spec.name!r}: annotation file {spec.annotation} not found")
                offsets, blanks = _jsonl_offsets(spec.annotation)
                self._offsets.append(offsets)
                self._blanks.append(blanks)
                n = len(self._offsets[-1])
            lines = _repeat(n, spec.repeat_time, spec.name)
            parts.append(np.stack([np.full_like(lines, d), lines], axis=1))
        self.index = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        if len(self.index) == 0:
            raise ValueError(f"SFT sources {[s.annotation for s in specs]} hold no samples")
        self._local = threading.local()  # one file handle per dataset per thread

    def __len__(self) -> int:
        return len(self.index)

    def read(self, i: int) -> tuple[dict[str, Any], DatasetSpec]:
        """The raw record at global index i; raises ValueError naming the file and line when the line is
        not UTF-8, not JSON (or nested too deeply to parse), or not a JSON object."""
        d, line = (int(x) for x in self.index[i])
        spec = self.specs[d]
        if self._inline is not None:
            record = self._inline[d][line]
            if not isinstance(record, dict):
                raise ValueError(f"{spec.annotation} record {line}: not a JSON object")
            return record, spec
        handles = self._local.__dict__.setdefault("handles", {})
        f = handles.get(d) or handles.setdefault(d, open(spec.annotation, "rb"))
        offset = int(self._offsets[d][line])
        f.seek(offset)
        raw = f.readline()
        where = f"{spec.annotation} line {line + 1 + int(np.searchsorted(self._blanks[d], offset))}"
        try:
            record = json.loads(raw.decode("utf-8-sig"))  # -sig: a BOM on line 1
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 ({e.reason} at byte {e.start}); "
                             "re-encode the file as UTF-8") from None
        except RecursionError:
            raise ValueError(f"{where}: JSON nested too deeply to parse") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: not a JSON object")
        return record, spec


def open_source(meta_path: Optional[str], llava_json: Optional[str], image_root: Optional[str]) -> ConversationSource:
    if meta_path:
        return ConversationSource(read_meta(meta_path))
    if not llava_json:
        raise ValueError("an SFT source needs meta_path or llava_json")
    try:
        with open(llava_json, encoding="utf-8") as f:
            records = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise ValueError(f"cannot read LLaVA JSON {llava_json}: {e or 'nested too deeply'}") from e
    if not isinstance(records, list):
        raise ValueError(f"LLaVA JSON {llava_json} must be a list of {{image, conversations}} records")
    spec = DatasetSpec(name=os.path.basename(llava_json), root=image_root or "", annotation=llava_json)
    return ConversationSource([spec], inline=[records])


def read_vqa_jsonl(path: str, image_root: Optional[str] = None) -> list[dict[str, Any]]:
    """Held-out VQA items {question, image (absolute), answers: list[str]}."""
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            item = json.loads(line)
            if not {"question", "image", "answers"} <= item.keys():
                raise ValueError(f"{path} line {n}: a VQA item needs question, image, answers")
            items.append({**item, "image": os.path.join(root, item["image"])})
    return items
