"""Composition of the Hydra tree: every stage and group option, typed overrides, experiments."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from internvl_train.config import (DeepSpeedConfig, LoggerConfig, RunConfig, TrainerConfig, check_run_config,
                                   write_resolved_config)
from internvl_train.stages.config import ContrastiveStageConfig, GenerativeStageConfig, SftStageConfig

STAGE_SCHEMAS = {"contrastive": ContrastiveStageConfig, "generative": GenerativeStageConfig, "sft": SftStageConfig}


@pytest.mark.parametrize("stage", sorted(STAGE_SCHEMAS))
def test_each_stage_composes_to_its_schema(compose_cfg, chat_model_dir, stage, tmp_path):
    overrides = [f"stage={stage}"] + (["data.sft.demo=true", "model=chat_fixture"] if stage == "sft" else [])
    if stage == "generative":  # stage 2 requires its starting weights to exist (a stage-1 export)
        overrides.append(f"init_from={tmp_path}")
    cfg = compose_cfg(overrides, extra_dirs=[chat_model_dir])
    assert OmegaConf.get_type(cfg, "stage") is STAGE_SCHEMAS[stage]
    assert "hydra" not in cfg
    run = check_run_config(cfg)
    assert isinstance(run, RunConfig) and type(run.stage) is STAGE_SCHEMAS[stage]
    assert run.stage.name == stage
    assert run.run_dir == f"runs/{stage}"
    assert isinstance(run.trainer, TrainerConfig) and isinstance(run.logger, LoggerConfig)


def test_default_is_contrastive_on_demo_data_with_wandb(compose_cfg):
    run = check_run_config(compose_cfg())
    assert run.stage.name == "contrastive"
    assert run.deepspeed.zero_stage == 0 and run.logger.backend == "wandb"
    assert (run.resume, run.init_from, run.mode) == ("auto", None, "train")


@pytest.mark.parametrize("option, stage, optimizer, param", [
    ("zero0", 0, "none", "none"), ("zero1", 1, "none", "none"), ("zero2", 2, "none", "none"),
    ("zero3", 3, "none", "none"), ("zero2_offload", 2, "cpu", "none"), ("zero3_offload", 3, "cpu", "cpu"),
])
def test_deepspeed_options(compose_cfg, option, stage, optimizer, param):
    run = check_run_config(compose_cfg([f"deepspeed={option}"]))
    assert isinstance(run.deepspeed, DeepSpeedConfig)
    assert (run.deepspeed.zero_stage, run.deepspeed.offload_optimizer, run.deepspeed.offload_param) == (
        stage, optimizer, param)


def test_logger_none(compose_cfg):
    assert check_run_config(compose_cfg(["logger=none"])).logger.backend == "none"


def test_dot_list_overrides_reach_the_dataclass_types(compose_cfg):
    run = check_run_config(compose_cfg([
        "trainer.max_steps=7", "trainer.lr=3e-4", "trainer.betas=[0.8,0.95]", "trainer.precision=bf16",
        "++trainer.lr_multipliers={vision.:0.1}", "stage.lock_vision=true", "logger.tags=[a,b]",
        "init_from=null", "run_dir=/tmp/somewhere", "deepspeed.overlap_comm=true",
    ]))
    assert run.trainer.max_steps == 7 and isinstance(run.trainer.max_steps, int)
    assert run.trainer.lr == pytest.approx(3e-4) and isinstance(run.trainer.lr, float)
    assert run.trainer.betas == [0.8, 0.95] and run.trainer.precision == "bf16"
    assert run.trainer.lr_multipliers == {"vision.": 0.1}
    assert run.stage.lock_vision is True and run.logger.tags == ["a", "b"]
    assert run.run_dir == "/tmp/somewhere" and run.deepspeed.overlap_comm is True


def test_int_given_for_float_field_is_converted(compose_cfg):
    run = check_run_config(compose_cfg(["trainer.grad_clip=2"]))
    assert run.trainer.grad_clip == 2.0 and isinstance(run.trainer.grad_clip, float)


@pytest.mark.parametrize("override, key", [
    ("trainer.max_stepz=3", "trainer.max_stepz"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("stage.lock_visio=true", "stage.lock_visio"),
    ("deepspeed.zero_stage=two", "deepspeed.zero_stage"),
])
def test_unknown_keys_and_wrong_types_fail_while_composing(compose_cfg, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg([override])
    assert key in f"{err.value} {err.value.__cause__}"


def _write_experiment(root: Path, name: str, body: str) -> Path:
    (root / "experiment").mkdir(parents=True, exist_ok=True)
    (root / "experiment" / f"{name}.yaml").write_text(body)
    return root


RECIPE = """# @package _global_
defaults:
  - override /stage: generative
  - override /logger: none
  - override /deepspeed: zero2
trainer:
  max_steps: 3
  lr_multipliers: {vision.: 0.1}
stage:
  itm_weight: 0.5
run_dir: runs/recipe_test
"""


def test_experiment_picks_options_and_values(compose_cfg, tmp_path):
    root = _write_experiment(tmp_path, "recipe_test", RECIPE)
    run = check_run_config(compose_cfg(["experiment=recipe_test", f"init_from={tmp_path}"], extra_dirs=[root]))
    assert isinstance(run.stage, GenerativeStageConfig) and run.stage.itm_weight == 0.5
    assert run.logger.backend == "none" and run.deepspeed.zero_stage == 2
    assert run.trainer.max_steps == 3 and run.trainer.lr_multipliers == {"vision.": 0.1}
    assert run.run_dir == "runs/recipe_test"


def test_command_line_overrides_beat_the_experiment(compose_cfg, tmp_path):
    root = _write_experiment(tmp_path, "recipe_test", RECIPE)
    run = check_run_config(compose_cfg(["experiment=recipe_test", "trainer.max_steps=9", "logger=wandb",
                                        f"init_from={tmp_path}"], extra_dirs=[root]))
    assert run.trainer.max_steps == 9 and run.logger.backend == "wandb"
    assert isinstance(run.stage, GenerativeStageConfig)


def test_experiment_with_an_unknown_key_fails_while_composing(compose_cfg, tmp_path):
    root = _write_experiment(tmp_path, "typo", "# @package _global_\ntrainer:\n  max_stepz: 3\n")
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg(["experiment=typo"], extra_dirs=[root])
    assert "max_stepz" in f"{err.value} {err.value.__cause__}"


def test_resolved_config_is_written_and_reloads_equal(compose_cfg, tmp_path):
    cfg = compose_cfg(["stage=generative", "trainer.max_steps=11"])
    path = tmp_path / "run" / "config.yaml"
    write_resolved_config(cfg, path, command="python -m internvl_train stage=generative trainer.max_steps=11")
    text = path.read_text()
    assert text.startswith("# python -m internvl_train stage=generative trainer.max_steps=11\n")
    assert "${" not in text
    reloaded = OmegaConf.load(path)
    assert reloaded.run_dir == "runs/generative" and reloaded.trainer.max_steps == 11
    assert OmegaConf.to_container(reloaded) == OmegaConf.to_container(cfg, resolve=True)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary left behind
