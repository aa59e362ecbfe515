"""Suite-wide isolation. Tests that build a trainer in-process (some in module-scoped fixtures) create a
process group, and engine.distributed exports its rendezvous variables (DeepSpeed reads them back). Left
in os.environ they would reach every later subprocess (torchrun scripts, sbatch jobs) as a bogus "rank 0
of a world of one" whose MASTER_PORT is still held by this process's store. They are only read when a
process group is created, so each test starts without them, and whatever a test exports is undone after."""
from __future__ import annotations

import os

import pytest

RENDEZVOUS_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _isolated_environment():
    for key in RENDEZVOUS_VARIABLES:
        os.environ.pop(key, None)
    saved = dict(os.environ)
    yield
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    os.environ.update(saved)
