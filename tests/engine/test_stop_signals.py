"""Every stop signal the trainer handles ends the run cleanly, in-process on the real Trainer + DeepSpeed:
in the loop a checkpoint of the current step (SIGTERM/SIGUSR1 exit 75, Ctrl-C exit 130); during the final
evaluation or the export an immediate stop (the final checkpoint is already complete) after which a rerun
does only what is missing; a second Ctrl-C stops at once."""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from toy_stage import ToyStage, make_cfg

from internvl_train.engine.distributed import init_distributed
from internvl_train.engine.signals import EXIT_INTERRUPTED, EXIT_PREEMPTED
from internvl_train.engine.trainer import Trainer
from internvl_train.engine.stage_api import DistInfo


@pytest.fixture(scope="module")
def dist() -> DistInfo:
    torch.set_num_threads(1)
    return init_distributed(timeout_s=60)


class SignallingStage(ToyStage):
    """Sends itself `signals` (one per call) at `where`: the n-th train step ("step:2"), "evaluate", "export"."""

    where: str = ""
    signals: list[int] = []

    def _maybe_signal(self, here: str) -> None:
        if here == self.where and self.signals:
            os.kill(os.getpid(), self.signals.pop(0))

    def compute_losses(self, model: Any, batch: Any) -> Any:
        self._maybe_signal(f"step:{batch['micro_index']}")
        return super().compute_losses(model, batch)

    def evaluate(self, model: Any) -> dict[str, float]:
        self._maybe_signal("evaluate")
        return super().evaluate(model)

    def export(self, model: Any, out_dir: str) -> None:
        self._maybe_signal("export")
        super().export(model, out_dir)


def run(dist: DistInfo, run_dir: Path, where: str = "", signals: tuple[int, ...] = ()) -> int:
    """fit() with the given signals injected; the exit code (0 when it returns)."""
    cfg = make_cfg(str(run_dir), **{"trainer.max_steps": 4, "trainer.save_every": 0})
    SignallingStage.where, SignallingStage.signals = where, list(signals)
    try:
        Trainer(cfg, SignallingStage(cfg, dist), dist).fit()
    except SystemExit as stopped:
        return int(stopped.code)
    return 0


def saved_steps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, EXIT_PREEMPTED), (signal.SIGUSR1, EXIT_PREEMPTED),
                                          (signal.SIGINT, EXIT_INTERRUPTED)])
def test_a_signal_in_the_loop_saves_the_current_step(dist, tmp_path, caplog, signum, code):
    with caplog.at_level(logging.WARNING, logger="internvl_train.engine"):
        assert run(dist, tmp_path, "step:1", (signum,)) == code
    assert saved_steps(tmp_path) == ["step_2"]  # the step in flight completes, then it is saved
    assert f"{signal.Signals(signum).name} received: checkpoint saved at step 2" in caplog.text
    assert run(dist, tmp_path) == 0 and saved_steps(tmp_path)[-1] == "step_4"


def test_a_second_ctrl_c_stops_at_once(dist, tmp_path):
    class TwiceStage(SignallingStage):
        def compute_losses(self, model: Any, batch: Any) -> Any:
            if batch["micro_index"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return ToyStage.compute_losses(self, model, batch)

    cfg = make_cfg(str(tmp_path), **{"trainer.max_steps": 4, "trainer.save_every": 0})
    with pytest.raises(SystemExit) as stopped:
        Trainer(cfg, TwiceStage(cfg, dist), dist).fit()
    assert stopped.value.code == EXIT_INTERRUPTED and saved_steps(tmp_path) == []


@pytest.mark.parametrize("where", ["evaluate", "export"])
def test_a_signal_after_the_loop_stops_and_the_rerun_finishes_the_rest(dist, tmp_path, caplog, where):
    with caplog.at_level(logging.WARNING, logger="internvl_train.engine"):
        assert run(dist, tmp_path, where, (signal.SIGTERM,)) == EXIT_PREEMPTED
    phase = {"evaluate": "the final evaluation", "export": "the export"}[where]
    assert f"SIGTERM received during {phase}: stopping, exit 75" in caplog.text
    assert saved_steps(tmp_path) == ["step_4"] and not (tmp_path / "export").exists()
    assert (tmp_path / "results.jsonl").exists() == (where == "export")
    assert run(dist, tmp_path) == 0
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and (tmp_path / "export" / "model.pt").is_file()


def test_handlers_are_restored_after_the_run(dist, tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    assert run(dist, tmp_path) == 0
    assert {s: signal.getsignal(s) for s in before} == before
