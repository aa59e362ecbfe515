"""The stage-1/2 models construct under DeepSpeed ZeRO-3 zero.Init with sane initial values."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("zero_init_build.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_internvl_g_builds_inside_zero_init_and_loads_stage1_weights():
    env = dict(os.environ, MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("partitioned=")][-1]
    facts = dict(item.split("=") for item in line.split())
    assert facts["partitioned"] == "True" and facts["cross_norm_ones"] == "True"
    assert facts["inherited"] == "True" and facts["created"] == "29"  # stage-1 weights land in ZeRO-3 shards
    assert float(facts["logit_scale"]) == pytest.approx(2.659, abs=0.02)
    assert 0.01 < float(facts["query_std"]) < 0.03
