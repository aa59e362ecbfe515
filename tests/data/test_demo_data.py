"""The embedded demo data: deterministic, cached, loadable through the pipeline, with a working tokenizer."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from data_pipelines.config import DataConfig, EvalSetConfig
from data_pipelines.demo import HELDOUT_SAMPLES, TRAIN_SAMPLES, ensure_demo_data
from data_pipelines.eval_sets import build_pair_eval_set
from data_pipelines.pairs import build_pair_loader


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_data(str(tmp_path_factory.mktemp("cache")))


def test_demo_contents_and_pipeline(demo, monkeypatch):
    with open(demo.attributes_file) as f:
        rows = [json.loads(line) for line in f]
    assert sum(r["split"] == "train" for r in rows) == TRAIN_SAMPLES
    assert sum(r["split"] == "heldout" for r in rows) == HELDOUT_SAMPLES
    assert all(os.path.isfile(os.path.join(demo.image_dir, r["image"])) for r in rows[:50])
    monkeypatch.setenv("INTERNVL_TRAIN_CACHE", os.path.dirname(demo.root))
    loader = build_pair_loader(DataConfig(demo=True, image_size=32, num_workers=0), 0, 1, 16, seed=0)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (16, 3, 32, 32) and len(set(batch["keys"])) == 16
    by_key = {r["key"]: r for r in rows}
    assert [by_key[k]["caption"] for k in batch["keys"]] == batch["captions"]
    assert batch["labels"].tolist() == [by_key[k]["label"] for k in batch["keys"]]
    heldout = build_pair_eval_set(EvalSetConfig(name="demo", shards=demo.heldout_shards, batch_size=100,
                                                classnames_file=demo.classnames_file,
                                                templates_file=demo.templates_file), image_size=32)
    labels = [label for b in heldout for label in b["labels"].tolist()]
    assert len(labels) == HELDOUT_SAMPLES and len(set(labels)) == len(heldout.classnames) == 20
    assert all("{}" in t for t in heldout.templates)


def test_tokenizer_round_trip_and_special_tokens(demo):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo.tokenizer_dir)
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    ids = tok.convert_tokens_to_ids(specials)
    assert ids == list(range(6)) and tok.pad_token_id == 0 and tok.eos_token_id == 2
    text = "a large purple triangle in the bottom right on a gray background. What color is it?"
    encoded = tok(text)["input_ids"]
    assert encoded[0] == tok.bos_token_id and tok.unk_token_id not in encoded
    assert tok.decode(encoded, skip_special_tokens=True) == text
    chat = tok("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert chat[0] == ids[4] and chat[-1] == ids[5]


@pytest.mark.slow
def test_generation_is_deterministic_and_concurrency_safe(tmp_path, demo):
    with ThreadPoolExecutor(2) as pool:  # two builders racing for the same cache folder
        first, second = pool.map(ensure_demo_data, [str(tmp_path / "a")] * 2)
    assert first == second
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".demo")]  # no temp folder left
    assert _tree_digest(first.root) == _tree_digest(demo.root)  # same bytes as an independent build
