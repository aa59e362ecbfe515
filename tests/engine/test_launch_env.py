"""Where a SLURM task rendezvouses: an exported MASTER_ADDR / MASTER_PORT (train.sbatch exports both, with
its 127.0.0.1 fallback when the first host does not resolve) wins over what the job's node list implies."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvl_train.engine.distributed import detect_launch_env, find_free_port

# A node list whose first host does not resolve: what the trainer derived from it could not rendezvous.
STEP_ENV = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1",
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "nohost-does-not-resolve-[1-2]"}


def test_exported_master_wins_inside_a_slurm_step() -> None:
    step = detect_launch_env({**STEP_ENV, "MASTER_ADDR": "127.0.0.2", "MASTER_PORT": "23456"})
    assert (step.source, step.rank, step.world_size) == ("slurm", 1, 2)
    assert (step.master_addr, step.master_port) == ("127.0.0.2", 23456)


def test_missing_master_port_is_derived_from_the_job_id() -> None:
    step = detect_launch_env({**STEP_ENV, "MASTER_ADDR": "127.0.0.2"})
    assert (step.master_addr, step.master_port) == ("127.0.0.2", 15000 + 4242)


RENDEZVOUS = """
import logging; logging.basicConfig(level=logging.INFO)
import torch, torch.distributed as dist
from internvl_train.engine.distributed import init_distributed
info = init_distributed(60)
value = torch.tensor([float(info.rank + 1)])
dist.all_reduce(value)
print("SUM", int(value.item()))
"""


@pytest.mark.slow
def test_two_slurm_tasks_rendezvous_on_the_exported_master(tmp_path: Path) -> None:
    """Real gloo through init_distributed: the unresolvable first host is never tried."""
    port = str(find_free_port())
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen([sys.executable, "-c", RENDEZVOUS], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**base, **STEP_ENV, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r),
                                   "MASTER_ADDR": "127.0.0.2", "MASTER_PORT": port})
             for r in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert all("SUM 3" in out for out in outputs)
    assert "rendezvous on 127.0.0.2:" + port in outputs[0]
