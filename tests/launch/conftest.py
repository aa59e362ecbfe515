from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from launch_helpers import SlurmCluster, start_cluster, stop_cluster

# One cluster per machine (slurmctld/slurmd use fixed ports): a fixed state dir lets a developer's running
# test cluster be reused instead of clashing with a second one.
STATE_DIR = Path(os.environ.get("INTERNVL_TEST_SLURM_STATE", "/tmp/internvl-train-test-slurm"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster from launch/slurm/cluster.sh, stopped at the end if we started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (slurmd runs jobs as their owner; apt installs)")
    if shutil.which("sinfo") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    try:
        cluster, started_here = start_cluster(STATE_DIR)
    except RuntimeError as err:
        if shutil.which("slurmctld") is None:
            pytest.skip(f"apt could not install SLURM (launch/slurm/cluster.sh start): {err}")
        raise
    yield cluster
    if started_here:
        stop_cluster(STATE_DIR)
