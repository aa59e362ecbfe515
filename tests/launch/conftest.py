from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from launch_helpers import REQUIRE_ENV, SlurmCluster, no_cluster, start_cluster, stop_cluster

# One cluster per machine (slurmctld/slurmd use fixed ports): a fixed state dir lets a developer's running
# test cluster be reused instead of clashing with a second one.
STATE_DIR = Path(os.environ.get("INTERNVL_TEST_SLURM_STATE", "/tmp/internvl-train-test-slurm"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A real single-node SLURM cluster from launch/slurm/cluster.sh, stopped at the end if we started it."""
    if os.geteuid() != 0:
        no_cluster("the SLURM test cluster needs root (slurmd runs jobs as their owner; apt installs)")
    if shutil.which("sinfo") is None and shutil.which("apt-get") is None:
        no_cluster("SLURM is not installed and apt-get is not available to install it")
    try:
        cluster, started_here = start_cluster(STATE_DIR)
    except RuntimeError as err:
        if shutil.which("slurmctld") is None:
            no_cluster(f"apt could not install SLURM (launch/slurm/cluster.sh start): {err}")
        raise
    yield cluster
    if started_here:
        stop_cluster(STATE_DIR)


# ---- what ran: one summary line for the tests marked slurm ------------------------------------------
SLURM_OUTCOMES: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slurm" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        SLURM_OUTCOMES[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SLURM_OUTCOMES:
        return
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(SLURM_OUTCOMES.items()))
    required = "required" if os.environ.get(REQUIRE_ENV) == "1" else f"not required ({REQUIRE_ENV} unset)"
    terminalreporter.write_line(f"SLURM tests (real cluster): {counts}; {required}")
