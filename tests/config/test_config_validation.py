"""validate(): what Hydra cannot check (ranges, choices, paths) is rejected with the full key and a reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from internvl_train.config import check_run_config
from internvl_train.errors import ConfigError
from internvl_train.stages import STAGE_CLASSES, get_stage_class
from internvl_train.stages.config import SftStageConfig

BAD_VALUES = [
    (["trainer.precision=fp16"], "trainer.precision", "fp16"),
    (["trainer.lr=0"], "trainer.lr", "> 0"),
    (["trainer.micro_batch_size=0"], "trainer.micro_batch_size", ">= 1"),
    (["trainer.betas=[0.9]"], "trainer.betas", "two values"),
    (["trainer.min_lr_ratio=1.5"], "trainer.min_lr_ratio", "[0, 1]"),
    (["trainer.schedule=linear"], "trainer.schedule", "cosine"),
    (["++trainer.lr_multipliers={vision.:-1}"], "trainer.lr_multipliers.vision.", ">= 0"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage", "4"),
    (["deepspeed.offload_param=cpu"], "deepspeed.offload_param", "zero_stage=3"),
    (["deepspeed.offload_optimizer=cpu"], "deepspeed.offload_optimizer", "zero_stage >= 1"),
    (["logger.mode=sometimes"], "logger.mode", "online"),
    (["init_from=/nonexistent/export"], "init_from", "does not exist"),
    (["resume=/nonexistent/ckpt"], "resume", "does not exist"),
    (["mode=serve"], "mode", "eval"),
    (["mode=eval", "resume=never"], "mode", "init_from"),
    (["stage.name=sft"], "stage.name", "stage=sft"),
    (["stage=generative", "stage.itc_weight=0", "stage.itm_weight=0", "stage.itg_weight=0"],
     "stage.itc_weight", "nothing to train"),
    (["stage=generative", "stage.itm_negatives=easy"], "stage.itm_negatives", "hard"),
    (["stage=generative", "stage.lora_rank=4"], "stage.lora_rank", "train_qllama"),
    (["stage=sft", "stage.freeze_mlp=true", "stage.freeze_llm=true"], "stage.freeze_llm", "nothing to train"),
    (["stage=sft", "model.chat.template=chatml"], "model.chat.template", "chatml"),
    (["stage=sft", "model=tiny"], "model.chat", "chat model"),
    (["stage=generative", "model.text.attn_implementation=flash_attention_2"], "model.text.attn_implementation",
     "4-D attention masks"),
    (["model.vision.num_heads=7"], "model.vision.hidden_size", "num_heads=7"),
    (["trainer.max_steps=???"], "trainer.max_steps", "missing mandatory value"),
    (["run_dir=${nope}"], "run_dir", "Interpolation key 'nope' not found"),
    (["stage=contrastive", "stage.unlocked_vision_layers=-2"], "stage.unlocked_vision_layers", ">= -1"),
]


@pytest.mark.parametrize("overrides, key, reason_part", BAD_VALUES)
def test_bad_value_names_the_full_key(compose_cfg, chat_model_dir, overrides, key, reason_part):
    with pytest.raises(ConfigError) as err:
        check_run_config(compose_cfg(overrides, extra_dirs=[chat_model_dir]))
    assert err.value.key == key
    assert reason_part in err.value.reason


def test_existing_paths_pass(compose_cfg, tmp_path):
    run = check_run_config(compose_cfg([f"init_from={tmp_path}", f"resume={tmp_path}", "mode=eval"]))
    assert run.init_from == str(tmp_path) and run.mode == "eval"


def test_sft_stage_checks_the_sft_data_it_reads(compose_cfg):
    cfg = compose_cfg(["stage=sft", "data.sft.demo=false", "data.sft.meta_path=null", "data.sft.llava_json=null"])
    with pytest.raises(ConfigError) as err:
        check_run_config(cfg)
    assert err.value.key.startswith("data.sft")


def test_group_option_without_its_schema_is_rejected(compose_cfg, tmp_path):
    (tmp_path / "logger").mkdir()
    (tmp_path / "logger" / "untyped.yaml").write_text("backend: none\n")  # merges into the typed root: ok
    assert check_run_config(compose_cfg(["logger=untyped"], extra_dirs=[tmp_path])).logger.backend == "none"
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "untyped.yaml").write_text("name: contrastive\n")  # no schema: a plain dict
    with pytest.raises(ConfigError) as err:
        check_run_config(compose_cfg(["stage=untyped"], extra_dirs=[tmp_path]))
    assert err.value.key == "stage" and "StageConfig" in err.value.reason


def test_stage_registry_imports_lazily_and_names_the_choices(monkeypatch):
    assert set(STAGE_CLASSES) == {"contrastive", "generative", "sft"}
    with pytest.raises(ValueError, match="contrastive, generative, sft"):
        get_stage_class("clip")
    monkeypatch.setitem(STAGE_CLASSES, "light", "internvl_train.stages.config:SftStageConfig")  # no torch
    assert get_stage_class("light") is SftStageConfig


def test_config_modules_do_not_import_torch():
    code = ("import sys; import internvl_train.config, internvl_train.stages, internvl_train.stages.config, "
            "internvl_train.app; internvl_train.config.register_configs(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


def test_a_stage_does_not_check_config_it_never_reads(compose_cfg, chat_model_dir):
    bad_sft_data = ["data.sft.loss_reduction=bogus"]
    assert check_run_config(compose_cfg(["stage=contrastive", *bad_sft_data])).stage.name == "contrastive"
    with pytest.raises(ConfigError) as err:
        check_run_config(compose_cfg(["stage=sft", "data.sft.demo=true", "model=chat_fixture", *bad_sft_data],
                                     extra_dirs=[chat_model_dir]))
    assert err.value.key == "data.sft.loss_reduction"


def test_eval_mode_needs_eval_sets_but_not_training_shards(compose_cfg, tmp_path):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")  # only its presence is checked here
    heldout = tmp_path / "heldout.csv"
    heldout.write_text("image,caption\n")
    base = ["data=webdataset", f"model.text.tokenizer={tokenizer}"]  # data.sources[0].urls stays ???
    run = check_run_config(compose_cfg([*base, "mode=eval", f"data.eval_sets=[{{name: h, csv: {heldout}}}]"]))
    assert run.data.sources == [] and run.data.eval_sets[0].name == "h"
    with pytest.raises(ConfigError) as err:
        check_run_config(compose_cfg([*base, "mode=eval"]))
    assert err.value.key == "data.eval_sets" and "mode=eval with no eval set" in err.value.reason
    with pytest.raises(ConfigError) as err:  # training still demands its shards
        check_run_config(compose_cfg([*base, f"data.eval_sets=[{{name: h, csv: {heldout}}}]"]))
    assert err.value.key == "data.sources[0].urls"
