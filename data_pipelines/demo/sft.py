"""Demo SFT conversations about the demo scenes (stage 3), built deterministically from the demo attributes.

Training records (InternVL-Chat JSONL + meta JSON) ask about the colour, shape, size, position and
background of training images in several phrasings: short answers, yes/no questions with balanced answers,
descriptions, multi-turn dialogues and two-image comparisons. The held-out VQA file asks the same kinds
of questions about held-out images; answers are spread over many values, so answering the most common
answer (overall or per question kind) is far from perfect.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

from data_pipelines.demo import DemoPaths
from data_pipelines.demo.scenes import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES

SFT_DEMO_VERSION = 1
SHORT = " Answer the question using a single word or phrase."
QUESTIONS = {
    "color": ("What color is the shape?", "What colour is the {shape}?", "Which color does the object have?",
              "Name the color of the {shape}."),
    "shape": ("What shape is it?", "Which shape is shown in the image?", "What kind of shape is the {color} object?",
              "Name the shape."),
    "size": ("Is the shape small or large?", "How big is the {shape}?", "Is the {color} {shape} large or small?"),
    "position": ("Where is the shape?", "Where is the {shape} located?", "In which part of the image is the "
                 "{color} object?"),
    "background": ("What is the background color?", "What colour is the background?",
                   "Which color is behind the {shape}?"),
}
SYNONYMS = {"gray": ["grey"], "center": ["middle", "centre"], "top left": ["upper left"],
            "top right": ["upper right"], "bottom left": ["lower left"], "bottom right": ["lower right"]}
DESCRIBE = ("Describe the image.", "Describe the picture in detail.", "What is in the image?")
ALTERNATIVES = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS),
                "background": list(BACKGROUNDS)}


@dataclass(frozen=True)
class SftDemoPaths:
    root: str
    meta_path: str  # InternVL-Chat meta JSON naming train.jsonl
    train_jsonl: str
    heldout_vqa: str  # JSONL {question, image (relative to this file's folder), answers, kind}


def sft_demo_paths(root: str) -> SftDemoPaths:
    return SftDemoPaths(root, os.path.join(root, "meta.json"), os.path.join(root, "train.jsonl"),
                        os.path.join(root, "heldout_vqa.jsonl"))


def ensure_demo_sft(demo: DemoPaths) -> SftDemoPaths:
    """Build (once, atomically) the demo SFT files next to the demo data folder."""
    root = f"{demo.root.rstrip(os.sep)}-sft-v{SFT_DEMO_VERSION}"
    paths = sft_demo_paths(root)
    if os.path.isfile(paths.meta_path):
        return paths
    tmp = tempfile.mkdtemp(prefix=".sft-", dir=os.path.dirname(root))
    try:
        _write(demo, root, sft_demo_paths(tmp))
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(paths.meta_path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _write(demo: DemoPaths, final_root: str, out: SftDemoPaths) -> None:
    with open(demo.attributes_file, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    images = os.path.relpath(demo.image_dir, final_root)  # relative: the cache folder may move
    train = [r for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    with open(out.train_jsonl, "w", encoding="utf-8") as f:
        for i, r in enumerate(train):
            f.write(json.dumps(train_record(r, train, random.Random(f"sft/train/{i}"))) + "\n")
    with open(out.heldout_vqa, "w", encoding="utf-8") as f:
        for i, r in enumerate(heldout):
            item = vqa_item(r["attributes"], random.Random(f"sft/heldout/{i}"))
            f.write(json.dumps({**item, "image": os.path.join(images, r["image"])}) + "\n")
    meta = {"demo_scenes": {"root": images, "annotation": "train.jsonl", "repeat_time": 1,
                            "max_dynamic_patch": 4, "data_augment": False, "length": len(train)}}
    with open(out.meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)


def vqa_item(attrs: dict[str, str], rng: random.Random) -> dict:
    """One short-answer question: an attribute question or a balanced yes/no question."""
    kind = rng.choice([*QUESTIONS, "yes/no"])
    if kind == "yes/no":
        question, answer = yes_no(attrs, rng)
    else:
        question, answer = rng.choice(QUESTIONS[kind]).format(**attrs), attrs[kind]
    return {"question": question + SHORT, "answers": [answer, *SYNONYMS.get(answer, [])], "kind": kind}


def yes_no(attrs: dict[str, str], rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(list(ALTERNATIVES))
    truth = rng.random() < 0.5
    value = attrs[kind] if truth else rng.choice([v for v in ALTERNATIVES[kind] if v != attrs[kind]])
    question = {"color": f"Is the shape {value}?", "shape": f"Is there a {value} in the image?",
                "size": f"Is the {attrs['shape']} {value}?", "position": f"Is the shape in the {value}?",
                "background": f"Is the background {value}?"}[kind]
    return question, "yes" if truth else "no"


def describe(attrs: dict[str, str]) -> str:
    return (f"The image shows a {attrs['size']} {attrs['color']} {attrs['shape']} in the {attrs['position']} "
            f"on a {attrs['background']} background.")


def train_record(r: dict, pool: list[dict], rng: random.Random) -> dict:
    """A conversation about one training image (or two, for comparisons)."""
    attrs, style = r["attributes"], rng.random()
    if style < 0.1:
        other = pool[rng.randrange(len(pool))]
        return {"image": [r["image"], other["image"]], "conversations": compare(attrs, other["attributes"], rng)}
    if style < 0.3:
        first = {"from": "human", "value": "<image>\n" + rng.choice(DESCRIBE)}
        turns = [first, {"from": "gpt", "value": describe(attrs)}]
    else:
        turns = []
        for n in range(rng.choice([1, 1, 2, 3])):
            item = vqa_item(attrs, rng)
            question = item["question"] if n == 0 else item["question"].replace(SHORT, "")
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": item["answers"][0]}]
        turns[0] = {"from": "human", "value": "<image>\n" + turns[0]["value"]}
    return {"image": r["image"], "conversations": turns}


def compare(a: dict[str, str], b: dict[str, str], rng: random.Random) -> list[dict]:
    kind = rng.choice(["color", "shape", "size"])
    question = f"Image-1: <image>\nImage-2: <image>\nDo the two shapes have the same {kind}?"
    same = "yes" if a[kind] == b[kind] else "no"
    answer = f"{same.capitalize()}. The first is {a[kind]} and the second is {b[kind]}."
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
