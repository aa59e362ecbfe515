"""REQUIRE_SLURM=1 turns "cannot set up the SLURM test cluster" into a failure, and a run that collected SLURM
tests ends with one line saying what ran (tests/launch/conftest.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch_helpers import REQUIRE_ENV, no_cluster

HERE = Path(__file__).resolve().parent


def test_no_cluster_skips_unless_slurm_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no root here"):
        no_cluster("no root here")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no root here; REQUIRE_SLURM=1 requires the SLURM tests"):
        no_cluster("no root here")


SAMPLE = '''
import pytest

@pytest.mark.slurm
def test_ran():
    pass

@pytest.fixture
def cluster():  # like slurm_cluster: the skip (or failure) happens while setting up
    from launch_helpers import no_cluster
    no_cluster("cannot set up SLURM")

@pytest.mark.slurm
def test_not_set_up(cluster):
    pass

def test_not_slurm():
    pass
'''


@pytest.mark.parametrize("required, expected", [
    ("", "SLURM tests (real cluster): 1 passed, 1 skipped; not required (REQUIRE_SLURM unset)"),
    ("1", "SLURM tests (real cluster): 1 failed, 1 passed; required"),
])
def test_the_summary_line_says_what_ran(tmp_path: Path, required: str, expected: str) -> None:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slurm: needs SLURM\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), REQUIRE_ENV: required}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout
    assert expected in out, out
