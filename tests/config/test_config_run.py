"""A valid config runs end to end through the CLI: resolved config written to the run dir, stage trained."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

TINY_STAGE_CLI = Path(__file__).with_name("tiny_stage_cli.py")
TINY_RUN = ["logger=none", "trainer.max_steps=2", "trainer.micro_batch_size=4", "trainer.warmup_steps=0",
            "trainer.log_every=1", "trainer.save_every=0"]


def _probe(script: Path) -> str:
    """Run `script` as __main__ (the -c form of run_cli keeps argv[1:] as Hydra overrides)."""
    return (f"import runpy, sys; sys.path.insert(0, {str(script.parent)!r}); "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")


@pytest.mark.slow
def test_valid_config_writes_resolved_config_and_trains(cli, tmp_path):
    result, _ = cli([*TINY_RUN, "run_dir=runs/${stage.name}_${trainer.max_steps}"], cwd=tmp_path,
                    code=_probe(TINY_STAGE_CLI))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "contrastive_2"
    written = run_dir / "config.yaml"
    header, body = written.read_text().split("\n", 1)
    assert header == "# python -m internvl_train " + " ".join(
        [*TINY_RUN, "'run_dir=runs/${stage.name}_${trainer.max_steps}'"])
    assert "${" not in body  # interpolations resolved
    saved = OmegaConf.load(written)
    assert saved.run_dir == "runs/contrastive_2" and saved.trainer.max_steps == 2
    assert saved.logger.backend == "none" and saved.stage.name == "contrastive"
    assert (run_dir / "export" / "weights.pt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing from Hydra in the cwd


@pytest.mark.slow
def test_mode_eval_evaluates_the_latest_checkpoint_without_training(cli, tmp_path):
    trained, _ = cli(TINY_RUN, cwd=tmp_path, code=_probe(TINY_STAGE_CLI))
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_dir = tmp_path / "runs" / "contrastive"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    evaluated, _ = cli([*TINY_RUN, "mode=eval"], cwd=tmp_path, code=_probe(TINY_STAGE_CLI))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in results] == [2, 2]  # end of training, then the eval-only run
    assert results[0]["mse"] == pytest.approx(results[1]["mse"])  # same weights evaluated
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == checkpoints  # nothing trained
    assert OmegaConf.load(run_dir / "config.yaml").mode == "eval"
