"""Reruns of a run: a finished one does nothing (no model built, results.jsonl unchanged); one that crashed
between the final checkpoint, evaluation and export redoes only the missing part; mode=eval with nothing
trained to evaluate is a config error, not a random model's numbers."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import exported
from toy_stage import ToyStage, make_cfg

from internvl_train.errors import ConfigError
from internvl_train.engine.distributed import init_distributed
from internvl_train.engine.trainer import Trainer
from internvl_train.engine.stage_api import DistInfo


@pytest.fixture(scope="module")
def dist() -> DistInfo:
    torch.set_num_threads(1)
    return init_distributed(timeout_s=60)


class CountingStage(ToyStage):
    builds = 0

    def build_model(self) -> Any:
        CountingStage.builds += 1
        return super().build_model()


def fit(dist: DistInfo, run_dir: Path, **overrides: Any) -> dict[str, float]:
    cfg = make_cfg(str(run_dir), **{"trainer.max_steps": 3, **overrides})
    return Trainer(cfg, CountingStage(cfg, dist), dist).fit()


def result_rows(run_dir: Path) -> list[str]:
    return (run_dir / "results.jsonl").read_text().splitlines()


def test_rerunning_a_finished_run_says_so_and_appends_nothing(dist, tmp_path, caplog):
    first = fit(dist, tmp_path)
    rows, builds = result_rows(tmp_path), CountingStage.builds
    with caplog.at_level(logging.INFO, logger="internvl_train.engine"):
        again = fit(dist, tmp_path)
    assert again == first and result_rows(tmp_path) == rows and len(rows) == 1
    assert CountingStage.builds == builds  # nothing built
    assert "run already finished" in caplog.text and "step_3 holds the final step (trainer.max_steps=3)" in caplog.text


def test_a_crash_before_the_export_redoes_the_export_only(dist, tmp_path):
    fit(dist, tmp_path)
    weights = exported(tmp_path)
    rows = result_rows(tmp_path)
    (tmp_path / "export" / "model.pt").rename(tmp_path / "model.pt.kept")
    (tmp_path / "export").rmdir()  # as a crash inside the export leaves it: only .tmp_export, no export/
    fit(dist, tmp_path)
    assert result_rows(tmp_path) == rows  # the final evaluation is not appended twice
    assert all(torch.equal(weights[k], v) for k, v in exported(tmp_path).items())
    assert not (tmp_path / ".tmp_export").exists()


def test_a_crash_before_the_final_evaluation_evaluates_once(dist, tmp_path):
    fit(dist, tmp_path)
    rows = result_rows(tmp_path)
    (tmp_path / "results.jsonl").unlink()
    fit(dist, tmp_path)
    assert result_rows(tmp_path) == rows


def test_raising_max_steps_trains_on(dist, tmp_path):
    fit(dist, tmp_path)
    fit(dist, tmp_path, **{"trainer.max_steps": 5})
    steps = [row.split(",")[0] for row in result_rows(tmp_path)]
    assert steps == ['{"step": 3', '{"step": 5']


def test_eval_with_no_checkpoint_and_no_weights_is_a_config_error(dist, tmp_path):
    cfg = make_cfg(str(tmp_path), mode="eval")
    with pytest.raises(ConfigError, match="eval found no checkpoint in .* and init_from is null"):
        Trainer(cfg, CountingStage(cfg, dist), dist).evaluate()
    assert not (tmp_path / "results.jsonl").exists()


def test_a_resume_after_a_crash_logs_each_step_once(dist, tmp_path):
    fit(dist, tmp_path, **{"trainer.max_steps": 6, "trainer.save_every": 3, "trainer.eval_every": 2})
    first = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # As a crash after step 6 was logged but before its checkpoint: step_3 is the newest complete checkpoint.
    shutil.rmtree(tmp_path / "checkpoints" / "step_6")
    shutil.rmtree(tmp_path / "export")
    (tmp_path / "checkpoints" / "latest").write_text("step_3")
    fit(dist, tmp_path, **{"trainer.max_steps": 6, "trainer.save_every": 3, "trainer.eval_every": 2})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [r["loss/loss"] for r in rows if "loss/loss" in r] == [r["loss/loss"] for r in first if "loss/loss" in r]
    assert [json.loads(line)["step"] for line in result_rows(tmp_path)] == [2, 4, 6]
