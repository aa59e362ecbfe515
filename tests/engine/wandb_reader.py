"""Read the records of a W&B offline run file (<run>/run-<id>.wandb) back, for tests.

The file is a 7-byte W&B header followed by a LevelDB-style log: 32 KiB blocks of records, each with a
7-byte header (crc32, little-endian uint16 length, type: 1 full, 2 first, 3 middle, 4 last) holding a
serialized wandb_internal_pb2.Record."""
from __future__ import annotations

from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending, payloads = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer too small for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
    return [wandb_internal_pb2.Record.FromString(p) for p in payloads]


def run_id_and_history_keys(path: Path) -> tuple[str, set[str], list[int]]:
    """(run id, every logged history key, the logged steps) of one offline run file."""
    run_id, keys, steps = "", set(), []
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                keys.add(key)
                if key == "_step":
                    steps.append(int(item.value_json))
    return run_id, keys, steps
