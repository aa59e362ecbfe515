"""Tiny generated shards for the pair-pipeline tests."""
from __future__ import annotations

import os
import stat

import pytest
import torch
from PIL import EpsImagePlugin

from data_pipelines.write_shards import write_shards
from tests.data.helpers import make_records


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def uneven_shards(tmp_path_factory) -> tuple[str, int]:
    """7 shards of 5..23 samples (101 in all): brace pattern and sample count."""
    root = tmp_path_factory.mktemp("uneven")
    sizes = [5, 11, 17, 23, 9, 21, 15]
    first = 0
    for index, size in enumerate(sizes):
        records = make_records(str(root / "img"), size, start=first)
        write_shards(records, str(root / "shards"), shard_size=size, prefix=f"part{index}")
        first += size
    pattern = "::".join(str(root / "shards" / f"part{i}-000000.tar") for i in range(len(sizes)))
    return pattern, sum(sizes)


@pytest.fixture(scope="session")
def even_shards(tmp_path_factory) -> tuple[str, int]:
    """96 samples in 6 shards of 16."""
    root = tmp_path_factory.mktemp("even")
    result = write_shards(make_records(str(root / "img"), 96), str(root / "shards"), shard_size=16)
    return result.pattern, 96


@pytest.fixture
def fake_ghostscript(tmp_path, monkeypatch) -> str:
    """A `gs` first on PATH that leaves a marker file when anything runs it (PIL's EPS plugin would)."""
    marker = tmp_path / "GHOSTSCRIPT_RAN"
    gs = tmp_path / "bin" / "gs"
    gs.parent.mkdir()
    gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    gs.chmod(gs.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{gs.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # forget any earlier lookup of gs
    return str(marker)
