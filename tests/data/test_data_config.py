"""DataConfig validation and the YAML options of the data group."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from data_pipelines.config import DataConfig, EvalSetConfig, PairSourceConfig
from internvl_train.errors import ConfigError


def test_missing_local_shards_are_rejected_with_the_path(tmp_path):
    (tmp_path / "s-0.tar").write_bytes(b"")
    cfg = DataConfig(sources=[PairSourceConfig(urls=str(tmp_path / "s-{0..2}.tar"))])
    cfg.validate()  # node checks pass: whether shards are needed is the stage's call
    with pytest.raises(ConfigError, match=r"2 of 3 shards do not exist.*s-1.tar") as info:
        cfg.validate_pair_sources()
    assert info.value.key == "sources[0].urls"  # relative to DataConfig: the stage qualifies it with data


@pytest.mark.parametrize("change, key", [
    (lambda c: setattr(c, "normalization", "openai"), "normalization"),
    (lambda c: setattr(c.sources[0], "weight", 2.0), "sources[0].weight"),  # weights need resampled
    (lambda c: setattr(c.sources[0], "urls", "pipe:curl -s x/{0..3}.tar"), "sources[0].urls"),
    (lambda c: c.eval_sets.append(EvalSetConfig(name="x")), "eval_sets[0]"),
])
def test_bad_values_name_their_key(tmp_path, change, key):
    (tmp_path / "s.tar").write_bytes(b"")
    cfg = DataConfig(sources=[PairSourceConfig(urls=str(tmp_path / "s.tar"))])
    cfg.validate()
    cfg.validate_pair_sources()
    change(cfg)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
        cfg.validate_pair_sources()
    assert info.value.key == key


def test_pair_sources_are_required_only_by_the_pair_stages():
    cfg = DataConfig()  # no shards, no demo: fine for stage 3 (SFT reads data.sft)
    cfg.validate()
    with pytest.raises(ConfigError) as info:
        cfg.validate_pair_sources()  # stages 1 and 2 call this from their validate_run
    assert info.value.key == "sources"


def test_yaml_options_merge_into_the_schema():
    schema = OmegaConf.structured(DataConfig)
    for name in ("demo", "webdataset"):
        raw = OmegaConf.load(f"configs/data/{name}.yaml")
        assert list(raw.defaults) == ["/schema/data@_here_", "_self_"]
        options = {k: v for k, v in OmegaConf.to_container(raw).items() if k != "defaults"}  # unresolved
        merged = OmegaConf.merge(schema, options)
        root = OmegaConf.merge({"model": {"vision": {"image_size": 96}}}, {"data": merged})
        assert root.data.image_size == 96  # the ViT's input size has one home: the model
    assert OmegaConf.to_object(OmegaConf.merge(schema, {"demo": True})).demo is True


def test_sft_runs_need_no_pair_sources():
    DataConfig().validate()  # stage 3 validates data.sft; pair sources are checked by stages 1 and 2 only
    with pytest.raises(ConfigError, match="no training shards"):
        DataConfig().validate_pair_sources()
