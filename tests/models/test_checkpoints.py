"""Our save/from_pretrained, stage 1 -> stage 2 inheritance, official InternVL-14B load/export, safe reading."""
from __future__ import annotations

import json

import pytest
import torch
from internvl_tiny import VOCAB, tiny_config
from official_fixtures import official_internvl14b

from internvl_train.models.internvl_g import official as internvl14b
from internvl_train.models.internvl_c.build import build_internvl_c, export_official, official_state_dict
from internvl_train.models.internvl_g.build import build_internvl_g
from internvl_train.models.weights import (CheckpointMismatchError, from_pretrained, load_state_into,
                                              read_state_dict, save_pretrained)
from internvl_train.models.internvl_c.modeling import InternVLC
from internvl_train.models.internvl_g.modeling import InternVLG


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return torch.randn(2, 3, 32, 32, generator=gen), ids, mask


@torch.no_grad()
@pytest.mark.parametrize("cls", [InternVLC, InternVLG])
def test_save_and_from_pretrained_give_identical_outputs(tmp_path, cls):
    torch.manual_seed(0)
    model = cls(tiny_config()).eval()
    save_pretrained(model, tmp_path, max_shard_size="100KB")  # forces shards + index
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    pixels, ids, mask = _batch()
    a, b = model(pixels, ids, mask), loaded(pixels, ids, mask)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_stage2_from_stage1_export_creates_only_the_new_parts(tmp_path, caplog):
    torch.manual_seed(0)
    stage1 = InternVLC(tiny_config())
    save_pretrained(stage1, tmp_path)
    with caplog.at_level("INFO"):
        stage2 = build_internvl_g(tiny_config(), init_from=str(tmp_path))
    assert "created 29 new" in caplog.text  # queries 1 + cross-attn 2x6 + clip_projector2 14 + itm_head 2
    created = set(stage2.state_dict()) - set(stage1.state_dict())
    assert created == {k for k in stage2.state_dict() if k.startswith(("query_tokens", "clip_projector2", "itm_head"))
                       or ".cross_attn." in k and k.startswith("text.")}
    for key, value in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[key], value), key
    g = InternVLG.from_internvl_c(stage1)
    assert torch.equal(g.text.model.layers[1].mlp.up_proj.weight, stage1.text.model.layers[1].mlp.up_proj.weight)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    model = InternVLC(tiny_config())
    state = model.state_dict()
    del state["logit_scale"]
    with pytest.raises(CheckpointMismatchError, match="missing 1 .*logit_scale"):
        load_state_into(model, state)
    state = dict(model.state_dict(), extra_head=torch.zeros(2))
    with pytest.raises(CheckpointMismatchError, match="unexpected 1 .*extra_head"):
        load_state_into(model, state)
    state = dict(model.state_dict(), text_projection=torch.zeros(3, 3))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches.*text_projection"):
        load_state_into(model, state)


def test_official_internvl14b_round_trip_is_exact(tmp_path):
    cfg = tiny_config()
    official = official_internvl14b(cfg)
    torch.save({"module": official}, tmp_path / "pytorch_model.bin")  # training-style wrapper, .bin
    model = build_internvl_g(cfg, init_from=str(tmp_path))
    exported = official_state_dict(model, "internvl14b")
    dropped = {k for k in official if k.endswith(internvl14b.IGNORED_SUFFIXES)}
    assert exported.keys() == official.keys() - dropped
    for key in exported:
        assert torch.equal(exported[key], official[key]), key
    out = export_official(model, tmp_path / "export")
    again = build_internvl_g(cfg, init_from=str(out))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_official_internvl14b_loads_as_internvl_c_without_its_g_parts(tmp_path):
    cfg = tiny_config()
    official = official_internvl14b(cfg)
    torch.save(official, tmp_path / "weights.pth")
    model = build_internvl_c(cfg, init_from=str(tmp_path / "weights.pth"))
    assert torch.equal(model.clip_projector.cross_attn.q_bias, official["clip_projector.cross_attn.q_bias"])
    assert torch.equal(model.vision.encoder.layer[1].lambda_1, official["vision_model.encoder.layers.1.ls1"])


def _official_without(tmp_path, drop) -> str:
    """An official InternVL-14B .pth (tiny sizes) without the keys for which `drop(key)` is true."""
    state = {k: v for k, v in official_internvl14b(tiny_config()).items() if not drop(k)}
    torch.save(state, tmp_path / "weights.pth")
    return str(tmp_path / "weights.pth")


@pytest.mark.parametrize("lacking, named", [
    (lambda k: k == "itm_head.bias", r"missing 1 \(itm_head\.bias\)"),
    (lambda k: k.startswith("clip_projector2."), r"missing 14 \(clip_projector2\."),  # a whole G head
    (lambda k: k == "qllama.model.norm.weight", r"missing 1 \(text\.model\.norm\.weight\)"),
], ids=["itm_head.bias", "clip_projector2", "inherited_llama_norm"])
def test_official_internvl_g_lacking_a_tensor_is_an_error_naming_it(tmp_path, lacking, named):
    path = _official_without(tmp_path, lacking)
    with pytest.raises(CheckpointMismatchError, match=named + r".*InternVL-G checkpoint.*init_from an InternVL-C"):
        build_internvl_g(tiny_config(), init_from=path)


def test_official_internvl_c_layout_builds_g_creating_only_the_g_parts(tmp_path, caplog):
    """A stage-1 source in the official layout (no query_tokens, cross-attention, clip_projector2, itm_head)."""
    def g_only(key: str) -> bool:
        return key.startswith(("query_tokens", "clip_projector2.", "itm_head.")) or (
            key.startswith("qllama.") and ".cross_attn." in key)

    path = _official_without(tmp_path, g_only)
    with caplog.at_level("INFO"):
        model = build_internvl_g(tiny_config(), init_from=path)
    assert "created 29 new" in caplog.text
    official = torch.load(path, weights_only=True)
    assert torch.equal(model.clip_projector.cross_attn.q_bias, official["clip_projector.cross_attn.q_bias"])
    assert torch.equal(model.text.model.norm.weight, official["qllama.model.norm.weight"])


def test_internvit_exports_load_back(tmp_path):
    model = InternVLC(tiny_config())
    for layout in ("internvit-hf", "internvit-pth"):
        out = export_official(model, tmp_path / layout, layout)
        fresh = InternVLC(tiny_config())
        from internvl_train.models.internvl_c.build import load_vision_weights

        load_vision_weights(fresh, out)
        for key, value in model.vision.state_dict().items():
            assert torch.equal(fresh.vision.state_dict()[key], value), (layout, key)


def test_reader_refuses_pickled_code_and_missing_paths(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"w": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported"):
        read_state_dict(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        read_state_dict(tmp_path / "absent")


def test_saved_config_rebuilds_the_same_model_class(tmp_path):
    model = InternVLG(tiny_config())
    save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "internvl_train_model.json").read_text())
    assert meta["model_class"] == "InternVLG" and meta["config"]["qllama"]["num_query_tokens"] == 4


def test_bin_shards_with_an_index_are_read_whole(tmp_path):
    a, b = {"x": torch.arange(3.0)}, {"y": torch.ones(2, 2)}
    torch.save(a, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save(b, tmp_path / "pytorch_model-00002-of-00002.bin")
    index = {"weight_map": {"x": "pytorch_model-00001-of-00002.bin", "y": "pytorch_model-00002-of-00002.bin"}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    torch.save({"stray": torch.zeros(1)}, tmp_path / "optimizer.pt")  # not in the index: not read
    state = read_state_dict(tmp_path)
    assert state.keys() == {"x", "y"} and torch.equal(state["y"], b["y"])
