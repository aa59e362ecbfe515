"""The demo SFT conversations: deterministic, loadable without skips, held-out VQA not solvable by priors."""
import collections
import json
import os
import random

import pytest

from data_pipelines.demo import DemoPaths
from data_pipelines.demo import scenes
from data_pipelines.demo.sft import ensure_demo_sft
from tests.data.sft_fixtures import build_byte_bpe_tokenizer
from data_pipelines.sft import SftDataConfig, build_sft_loader, read_vqa_jsonl


def mini_demo(root: str, n_train: int = 60, n_heldout: int = 200) -> DemoPaths:
    """A small stand-in for the demo folder: the same attributes JSONL shape and scene images."""
    image_dir = os.path.join(root, "images")
    with open(os.path.join(root, "attributes.jsonl"), "w") as f:
        for split, n in (("train", n_train), ("heldout", n_heldout)):
            os.makedirs(os.path.join(image_dir, split), exist_ok=True)
            for i in range(n):
                rng = random.Random(f"{split}/{i}")
                scene = scenes.random_scene(rng)
                rel = f"{split}/{split}_{i:06d}.png"
                scenes.render(scene, rng).save(os.path.join(image_dir, rel))
                f.write(json.dumps({"key": f"{split}_{i}", "split": split, "image": rel, "caption": "",
                                    "label": scene.label, "attributes": scene.attributes()}) + "\n")
    return DemoPaths(root=root, train_shards="", heldout_shards="", classnames_file="", templates_file="",
                     attributes_file=os.path.join(root, "attributes.jsonl"), image_dir=image_dir, tokenizer_dir="")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cache") / "demo-v1")
    os.makedirs(root)
    return mini_demo(root)


def test_deterministic_and_relocatable(demo, tmp_path):
    first = ensure_demo_sft(demo)
    other_root = str(tmp_path / "demo-v1")
    os.makedirs(other_root)
    second = ensure_demo_sft(mini_demo(other_root))
    for a, b in ((first.train_jsonl, second.train_jsonl), (first.heldout_vqa, second.heldout_vqa),
                 (first.meta_path, second.meta_path)):
        assert open(a).read() == open(b).read()
    assert ensure_demo_sft(demo) == first  # cached


def test_heldout_vqa_images_exist_and_priors_fail(demo):
    items = read_vqa_jsonl(ensure_demo_sft(demo).heldout_vqa)
    assert len(items) == 200 and all(os.path.isfile(i["image"]) and "heldout" in i["image"] for i in items)
    overall = collections.Counter(i["answers"][0] for i in items).most_common(1)[0][1] / len(items)
    by_kind = collections.defaultdict(collections.Counter)
    for i in items:
        by_kind[i["kind"]][i["answers"][0]] += 1
    per_kind = sum(max(c.values()) for c in by_kind.values()) / len(items)
    assert overall < 0.2 and per_kind < 0.5, (overall, per_kind)
    yes_no = by_kind["yes/no"]
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.35 * sum(yes_no.values())


def test_every_training_conversation_loads(demo):
    paths = ensure_demo_sft(demo)
    kinds = collections.Counter()
    for line in open(paths.train_jsonl):
        r = json.loads(line)
        kinds["multi_image" if isinstance(r["image"], list) else f"turns_{len(r['conversations']) // 2}"] += 1
    assert kinds["multi_image"] > 0 and kinds["turns_1"] > 0 and kinds["turns_2"] + kinds["turns_3"] > 0
    cfg = SftDataConfig(meta_path=paths.meta_path, system_message="Be brief.",
                        packing=True, max_seq_len=512, max_packed_tokens=1024, num_workers=0)
    loader = build_sft_loader(cfg, build_byte_bpe_tokenizer(), 0, 1, 2, 0, num_image_token=4, image_size=32,
                              template="internvl2_5")
    while loader.epoch == 0:
        loader.next_batch()
    m = loader.metrics()
    assert not [k for k in m if "skipped" in k] and m["data/sft/samples"] >= 60
