"""The real command line: a bad config exits non-zero with the key named, before anything is built."""
from __future__ import annotations

import pytest

# Runs the CLI and reports which heavy modules were imported by the time it exited.
IMPORT_PROBE = """
import runpy, sys
try:
    runpy.run_module("internvl_train", run_name="__main__", alter_sys=True)
finally:
    print("heavy:", sorted(m for m in ("torch", "deepspeed", "transformers") if m in sys.modules))
"""

BAD_CONFIGS = [
    (["trainer.max_stepz=3"], 2, "config error: trainer.max_stepz: unknown key: TrainerConfig has no field "
                                 "'max_stepz'; did you mean trainer.max_steps?"),
    (["+trainer.max_step=5"], 2, "config error: trainer.max_step: unknown key"),  # `+` into a typed node
    (["+model.vision.foo=1"], 2, "model.vision.foo: unknown key: VisionTowerConfig has no field 'foo'; valid keys:"),
    (["stagee=sft"], 2, "config error: stagee: unknown key: RunConfig has no field 'stagee'; did you mean stage?"),
    (["trainer.max_steps=abc"], 1, "trainer.max_steps"),
    (["init_from=/nonexistent"], 2, "config error: init_from: path '/nonexistent' does not exist"),
    (["stage=generative", "stage.itm_negatives=easy"], 2, "config error: stage.itm_negatives:"),
]


@pytest.mark.parametrize("args, exit_code, message", BAD_CONFIGS)
def test_bad_config_exits_before_anything_is_built(cli, tmp_path, args, exit_code, message):
    result, seconds = cli(args, cwd=tmp_path, code=IMPORT_PROBE)
    assert result.returncode == exit_code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "heavy: []" in result.stdout  # no torch: no model, no process group, no data loader
    assert list(tmp_path.iterdir()) == []  # no run dir, no outputs/ or .hydra/ or log file from Hydra
    assert seconds < 60  # generous: a loaded 2-core machine; it takes about a second when idle


def test_cli_module_entry_point_exits_2_on_validation_error(cli, tmp_path):
    result, _ = cli(["trainer.precision=fp16"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: trainer.precision: got 'fp16', expected one of 'fp32', 'bf16'"


def test_cli_prints_the_composed_config_without_running(cli, tmp_path):
    result, _ = cli(["stage=generative", "trainer.max_steps=4", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: generative" in result.stdout and "max_steps: 4" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_schemas_are_not_options_of_their_groups(cli, tmp_path):
    result, _ = cli(["stage=sft_schema"], cwd=tmp_path)
    assert result.returncode == 1 and "Could not find 'stage/sft_schema'" in result.stderr
    options = result.stderr.split("Available options in 'stage':")[1].split("Config search path")[0].split()
    assert options == ["contrastive", "generative", "sft"]


def test_keys_added_to_dict_fields_are_accepted(compose_cfg):
    from internvl_train.config import check_run_config

    run = check_run_config(compose_cfg(["+trainer.lr_multipliers.vision=0.1"]))
    assert run.trainer.lr_multipliers == {"vision": 0.1}


def test_missing_tokenizer_and_chat_llm_are_config_errors_before_anything_is_built(cli, tmp_path):
    shards = tmp_path / "data"
    shards.mkdir()
    (shards / "train-0.tar").write_bytes(b"")  # exists: the shard check passes, the tokenizer one must not
    run = tmp_path / "run"
    run.mkdir()
    cases = [
        (["data=webdataset", f"data.sources=[{{urls: {shards / 'train-0.tar'}}}]"],
         "config error: model.text.tokenizer: null, and neither init_from nor model.text.pretrained ships a "
         "tokenizer"),
        (["model.text.tokenizer=/nonexistent/tok"], "config error: model.text.tokenizer: '/nonexistent/tok' has no "
                                                    "tokenizer_config.json"),
        (["stage=sft", "model.chat.llm_from_text_tower=false", "model.chat.llm_path=/nonexistent/llm"],
         "config error: model.chat.llm_path: '/nonexistent/llm' is not a Hugging Face model directory"),
    ]
    for args, message in cases:
        result, _ = cli(args, cwd=run, code=IMPORT_PROBE)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and "heavy: []" in result.stdout
        assert list(run.iterdir()) == []
