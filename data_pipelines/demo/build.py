"""Generation of the demo data into a folder (see data_pipelines.demo)."""
from __future__ import annotations

import json
import os
import random

from data_pipelines.demo import (HELDOUT_SAMPLES, HELDOUT_SHARDS, TRAIN_SAMPLES, TRAIN_SHARDS, demo_paths)
from data_pipelines.demo import scenes
from data_pipelines.demo.tokenizer import build_tokenizer
from data_pipelines.write_shards import write_shards


def build_demo(folder: str) -> None:
    """Write everything into `folder` (renamed into place afterwards, so no file names its own folder)."""
    paths = demo_paths(folder)
    records = {split: _render_split(paths.image_dir, split, n)
               for split, n in (("train", TRAIN_SAMPLES), ("heldout", HELDOUT_SAMPLES))}
    shards_dir = os.path.dirname(paths.train_shards)
    for split, num_shards in (("train", TRAIN_SHARDS), ("heldout", HELDOUT_SHARDS)):
        split_records = [dict(r, image=os.path.join(paths.image_dir, r["image"]), source=r["image"]) for r in records[split]]
        result = write_shards(split_records, shards_dir, shard_size=-(-len(split_records) // num_shards),
                              prefix=split)
        assert result.written == len(split_records), result.failed
    _strip_source_paths(shards_dir)
    with open(paths.attributes_file, "w") as f:
        for split in ("train", "heldout"):
            for record in records[split]:
                f.write(json.dumps(record, sort_keys=True) + "\n")
    with open(paths.classnames_file, "w") as f:
        f.write("\n".join(scenes.classnames()) + "\n")
    with open(paths.templates_file, "w") as f:
        f.write("\n".join(scenes.ZERO_SHOT_TEMPLATES) + "\n")
    build_tokenizer([r["caption"] for r in records["train"]] + scenes.classnames(), paths.tokenizer_dir)


def _render_split(image_dir: str, split: str, count: int) -> list[dict]:
    os.makedirs(os.path.join(image_dir, split), exist_ok=True)
    records = []
    for i in range(count):
        rng = random.Random(f"demo/{split}/{i}")
        scene = scenes.random_scene(rng)
        key = f"{split}_{i:06d}"
        relative = os.path.join(split, key + ".png")
        scenes.render(scene, rng).save(os.path.join(image_dir, relative), format="PNG", optimize=False)
        records.append({"key": key, "split": split, "image": relative, "caption": scenes.caption(scene, rng),
                        "label": scene.label, "attributes": scene.attributes()})
    return records


def _strip_source_paths(shards_dir: str) -> None:
    """The writer's manifests hash absolute temp paths; drop them so the folder is relocatable."""
    for name in os.listdir(shards_dir):
        if name.endswith("writer_manifest.json"):
            os.remove(os.path.join(shards_dir, name))
