"""The SFT loader: sources, skip counters, packing limits, rank sharding and exact resume."""
import copy
import json
import os

import pytest
import torch

from tests.data.sft_fixtures import (build_byte_bpe_tokenizer, qa_record, write_color_images,
                                              write_meta_dataset)
from data_pipelines.sft import SftDataConfig, build_sft_loader
from internvl_train.losses.labels import IGNORE_INDEX

NIT, SIZE = 4, 28


@pytest.fixture(scope="module")
def tok():
    return build_byte_bpe_tokenizer()


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("sft"))
    names = write_color_images(folder, [(28 + 9 * i, 28 + 13 * (i % 5)) for i in range(12)])
    with open(os.path.join(folder, "corrupt.png"), "wb") as f:
        f.write(b"not a png")
    words = ["red", "green", "blue", "round", "square", "big", "small"]
    single = [qa_record(names[i % 12], [(f"<image>\nWhat is {words[i % 7]}?", f"It is {words[(i + 3) % 7]}.")] +
                        [(f"Is it {w}?", "Yes." if i % 2 else "No.") for w in words[: i % 3]]) for i in range(30)]
    single[4] = qa_record("corrupt.png", [("q", "a")])
    single[9] = qa_record("missing.png", [("q", "a")])
    mixed = [qa_record(None, [("Say hi.", "Hi " * (1 + i % 4))]) if i % 2 else
             qa_record([names[i % 12], names[(i + 1) % 12]], [("Compare.", "They differ.")]) for i in range(10)]
    return write_meta_dataset(folder, {"single": single, "mixed": mixed},
                              mixed={"repeat_time": 1.5, "max_dynamic_patch": 2})


def make(meta, tok, rank=0, world=1, mbs=2, seed=0, **cfg):
    c = SftDataConfig(meta_path=meta, system_message="Answer briefly.", num_image_token=NIT, **cfg)
    return build_sft_loader(c, tok, rank=rank, world_size=world, micro_batch_size=mbs, seed=seed,
                            num_image_token=NIT, image_size=SIZE, template="internvl2_5", max_tiles=6)


def same_batch(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k], k


def test_repeat_time_and_skip_counters(meta, tok):
    loader = make(meta, tok, num_workers=0)
    assert len(loader.source) == 30 + 10 + 5  # repeat_time 1.5 on "mixed"
    batches = [loader.next_batch() for _ in range(30)]  # 60 rows > one epoch of 45
    m = loader.metrics()
    assert m["data/sft/skipped/bad_image"] >= 2 and m["data/sft/epoch"] >= 1
    assert m["data/sft/samples"] + m["data/sft/skipped/bad_image"] >= 45
    mixed = loader.source.specs[1]
    assert mixed.max_dynamic_patch == 2
    sample = loader.encoder.encode(qa_record(["img_0005.png"], [("q", "a")]), mixed)
    assert sample.num_tiles == [3]  # 73x28: 2x1 grid (budget 2) + thumbnail; 3x1 + 1 with the default 6
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    for b in batches:
        assert int((b["input_ids"] == ctx).sum()) == NIT * int(b["num_tiles"].sum()) == NIT * len(b["pixel_values"])
        assert (b["labels"] != IGNORE_INDEX).any(dim=1).all()  # no silently all-masked row


def test_packing_limits_and_fill(meta, tok):
    loader = make(meta, tok, packing=True, max_seq_len=256, max_packed_tokens=300, max_tiles_per_row=20, num_workers=0)
    for _ in range(10):
        b = loader.next_batch()
        assert int(b["attention_mask"].sum(dim=1).max()) <= 300 and len(b["pixel_values"]) <= 2 * 20
        for row in range(b["input_ids"].shape[0]):
            assert int(b["position_ids"][row][b["sample_ids"][row] >= 0].eq(0).sum()) == int(b["sample_ids"][row].max()) + 1
        assert b["num_samples"] > 2
    assert loader.metrics()["data/sft/samples_per_row"] > 1.5


@pytest.mark.parametrize("packing", [True, False])
def test_exact_resume(meta, tok, packing):
    opts = dict(packing=packing, max_seq_len=256, max_packed_tokens=400, max_tiles_per_row=10, num_workers=2)
    first = make(meta, tok, **opts)
    reference, state = [], None
    for step in range(26):
        if step == 11:
            state = copy.deepcopy(first.state_dict())
            assert (state["carry"] is not None) == packing  # the packer's carry-over is part of the state
        reference.append(first.next_batch())
    assert first.epoch >= 1  # the replay crosses an epoch boundary
    json.dumps(state)  # the state is plain data
    resumed = make(meta, tok, **opts)
    resumed.load_state_dict(state)
    for step in range(11, 26):
        same_batch(resumed.next_batch(), reference[step])
    other_seed = make(meta, tok, seed=1, **opts)
    a, b = other_seed.next_batch()["input_ids"], reference[0]["input_ids"]
    assert a.shape != b.shape or not torch.equal(a, b)


def test_resume_refuses_other_world_size(meta, tok):
    state = make(meta, tok, num_workers=0).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        make(meta, tok, rank=0, world=2, num_workers=0).load_state_dict(state)


def test_two_ranks_disjoint_equal_shards(meta, tok, tmp_path):
    r0, r1 = (make(meta, tok, rank=r, world=2, num_workers=0) for r in (0, 1))
    for epoch in (0, 1):
        a, b = r0.rank_order(epoch).tolist(), r1.rank_order(epoch).tolist()
        assert len(a) == len(b) == 45 // 2 and not set(a) & set(b)
    assert r0.rank_order(0).tolist() != r0.rank_order(1).tolist()
    # Clean data (nothing skipped): both ranks finish the epoch after the same number of micro-batches.
    clean = write_meta_dataset(str(tmp_path), {"t": [qa_record(None, [(f"q{i}", "a" * (1 + i))]) for i in range(23)]})
    counts = []
    for rank in (0, 1):
        loader, n = make(clean, tok, rank=rank, world=2, mbs=3, num_workers=0), 0
        while loader.epoch < 2:
            loader.next_batch()
            n += 1
        counts.append(n)
    assert counts[0] == counts[1] == 8  # 2 epochs x 11 samples / 3 per batch, rounded up


def test_llava_json_source(tmp_path, tok):
    names = write_color_images(str(tmp_path / "imgs"), [(40, 30)])
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([qa_record(names[0], [("What?", "A colour.")]), qa_record(None, [("Hi", "Yo")])]))
    c = SftDataConfig(llava_json=str(path), image_root=str(tmp_path / "imgs"))
    loader = build_sft_loader(c, tok, 0, 1, 2, 0, NIT, SIZE, template="vicuna_v1")
    b = loader.next_batch()
    assert b["num_samples"] == 2 and b["pixel_values"].shape[1:] == (3, SIZE, SIZE)


def test_all_bad_stops_with_reasons(tmp_path, tok):
    meta = write_meta_dataset(str(tmp_path), {"bad": [qa_record("nope.png", [("q", "a")])] * 8})
    loader = make(meta, tok, num_workers=0, max_consecutive_failures=5)
    with pytest.raises(RuntimeError, match="bad_image"):
        loader.next_batch()
    assert loader.metrics()["data/sft/skipped/bad_image"] == 5


def test_config_validation(meta, tok):
    from internvl_train.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one"):
        SftDataConfig().validate()
    with pytest.raises(ConfigError, match="loss_reduction"):
        SftDataConfig(meta_path=meta, loss_reduction="mean").validate()
    with pytest.raises(ValueError, match="template"):
        build_sft_loader(SftDataConfig(meta_path=meta), tok, 0, 1, 2, 0, NIT, SIZE, template="chatml")
    with pytest.raises(ConfigError, match="image_root"):
        SftDataConfig(llava_json=meta).validate()
    with pytest.raises(ConfigError, match="file not found") as err:
        SftDataConfig(meta_path=meta + ".missing").validate()
    assert err.value.key == "meta_path"  # relative to data.sft: the config walk qualifies it
    with pytest.raises(ConfigError, match="max_packed_tokens"):
        SftDataConfig(meta_path=meta, packing=True, max_seq_len=100, max_packed_tokens=50).validate()
    SftDataConfig(meta_path=meta).validate()
