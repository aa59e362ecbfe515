"""Process-group setup: where this process sits in the job (the collectives are collectives.py's).

Rank detection order: torchrun's env (RANK/WORLD_SIZE/LOCAL_RANK), then a SLURM *job step* (srun sets
SLURM_STEP_ID; the batch shell also carries SLURM_PROCID=0 but is not a task), else one plain process.
Inside a SLURM step an exported MASTER_ADDR / MASTER_PORT wins (launch/slurm/train.sbatch exports both,
with its 127.0.0.1 fallback for a first host that does not resolve); only what is missing is derived from
the job (first host of SLURM_JOB_NODELIST, 15000 + job id mod 20000).
DeepSpeed always needs a process group, so a plain process gets a world of one on a free local port.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as tdist

from internvl_train.engine.stage_api import DistInfo

log = logging.getLogger("internvl_train.engine")


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm" | "single"


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slurm_master_addr(nodelist: str | None) -> str:
    """First host of the job's node list; 127.0.0.1 when scontrol is unavailable (single node)."""
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "127.0.0.1"
    return out[0] if out else "127.0.0.1"


def slurm_master_port(job_id: str | None) -> int:
    """A port every task of the job derives identically (jobs sharing a node get different ports)."""
    return 15000 + int(job_id or 0) % 20000


def detect_launch_env(env: Mapping[str, str] | None = None) -> LaunchEnv:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        addr = env.get("MASTER_ADDR") or slurm_master_addr(env.get("SLURM_JOB_NODELIST"))
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else slurm_master_port(env.get("SLURM_JOB_ID"))
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1)),
                         int(env.get("SLURM_LOCALID", 0)), addr, port, "slurm")
    return LaunchEnv(0, 1, 0, "127.0.0.1", find_free_port(), "single")


def init_distributed(timeout_s: int) -> DistInfo:
    """Create the process group (gloo on CPU, nccl on GPU) through DeepSpeed and describe this rank."""
    import deepspeed

    launch = detect_launch_env()
    use_cuda = torch.cuda.is_available()
    device = f"cuda:{launch.local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(launch.local_rank)
    if not tdist.is_initialized():
        if launch.world_size > 1:
            log.info("rank %d of %d (%s), rendezvous on %s:%d", launch.rank, launch.world_size, launch.source,
                     launch.master_addr, launch.master_port)
        os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size),
                          LOCAL_RANK=str(launch.local_rank), MASTER_ADDR=launch.master_addr,
                          MASTER_PORT=str(launch.master_port))
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=timeout_s), rank=launch.rank,
                                   world_size=launch.world_size)
    else:  # a second run in the same process (tests, notebooks): DeepSpeed's initialize reads LOCAL_RANK
        os.environ.setdefault("LOCAL_RANK", str(launch.local_rank))
    return DistInfo(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank, device=device)
