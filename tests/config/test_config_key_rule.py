"""The key rule: validate() raises keys relative to its node; the caller of a sub-node's validator qualifies them.
And knobs that moved name their new home."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from data_pipelines.sft.config import SftDataConfig
from internvl_train.config import check_run_config
from internvl_train.config_keys import composition_key_error
from internvl_train.errors import ConfigError, join_key, qualified
from internvl_train.models.chat.configuration import ChatLLMConfig


def test_qualifying_a_relative_key():
    assert join_key("data", "sources[0].urls") == "data.sources[0].urls"
    assert join_key("data.sources", "[0]") == "data.sources[0]"
    assert join_key("data.sft", "") == "data.sft" and join_key("", "seed") == "seed"
    err = ConfigError("", "set exactly one")
    assert str(err) == "set exactly one" and str(err.under("data.sft")) == "data.sft: set exactly one"
    with pytest.raises(ConfigError) as info:
        with qualified("model"), qualified("chat"):
            raise ConfigError("llm.hidden_size", "bad")
    assert info.value.key == "model.chat.llm.hidden_size" and info.value.reason == "bad"


@pytest.mark.parametrize("overrides, node, relative, full", [
    (["model.chat.llm.num_heads=3"], lambda run: run.model.chat.llm, "hidden_size", "model.chat.llm.hidden_size"),
    (["data.sft.demo=false", "data.sft.llava_json=x.json"], lambda run: run.data.sft, "image_root",
     "data.sft.image_root"),
    (["data.sft.meta_path=m.json"], lambda run: run.data.sft, "", "data.sft"),  # about the whole node
])
def test_a_sub_node_raises_a_relative_key_the_walk_qualifies(compose_cfg, chat_model_dir, overrides, node,
                                                             relative, full):
    base = ["stage=sft", "model=chat_fixture", "data.sft.demo=true"]
    cfg = compose_cfg([*base, *overrides], extra_dirs=[chat_model_dir])
    with pytest.raises(ConfigError) as err:
        check_run_config(cfg)
    assert err.value.key == full
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError) as direct:
        node(OmegaConf.to_object(cfg)).validate()
    assert direct.value.key == relative and direct.value.reason == err.value.reason


def test_node_validators_alone_name_relative_keys():
    with pytest.raises(ConfigError) as err:
        ChatLLMConfig(hidden_size=60, num_heads=8).validate()
    assert err.value.key == "hidden_size"
    with pytest.raises(ConfigError) as err:
        SftDataConfig(meta_path="m.json", loss_reduction="mean").validate()
    assert err.value.key == "loss_reduction"


@pytest.mark.parametrize("key, home", [
    ("max_dynamic_patch", "model.chat.max_dynamic_patch"), ("min_dynamic_patch", "model.chat.min_dynamic_patch"),
    ("use_thumbnail", "model.chat.use_thumbnail"), ("dynamic_image_size", "model.chat.dynamic_image_size"),
    ("image_size", "model.chat.force_image_size"),
])
def test_moved_tiling_knobs_name_their_new_home(compose_cfg, key, home):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["stage=sft", "model=chat_tiny", "data=demo_sft", f"data.sft.{key}=4"])
    error = composition_key_error(info.value)
    assert error is not None and error.key == f"data.sft.{key}"
    assert error.reason == f"unknown key: SftDataConfig has no field {key!r}; it moved to {home}"
    with pytest.raises(ConfigError, match=f"it moved to {home}"):  # `+key` passes Hydra: our check names it
        check_run_config(compose_cfg(["stage=sft", "model=chat_tiny", "data=demo_sft", f"+data.sft.{key}=4"]))


def test_the_demo_tiling_is_what_the_data_pipeline_used(compose_cfg):
    """Stage 3's demo tiles as before the knobs moved from data.sft to model.chat: 64 px, 1..4 tiles, thumbnail."""
    chat = check_run_config(compose_cfg(["stage=sft", "model=chat_tiny", "data=demo_sft"])).model.chat
    assert (chat.force_image_size, chat.dynamic_image_size, chat.min_dynamic_patch, chat.max_dynamic_patch,
            chat.use_thumbnail) == (64, True, 1, 4, True)
