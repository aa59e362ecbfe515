"""Hostile SFT records and image files never crash a run: each is skipped and counted by reason."""
from __future__ import annotations

import json
import os
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tests.data.sft_fixtures import build_byte_bpe_tokenizer, qa_record, write_color_images
from data_pipelines.sft import SftDataConfig, build_sft_loader
from data_pipelines.sft.encode import EncodedSample
from tests.data.helpers import EPS, gradient_16bit

NIT, SIZE = 4, 28


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb as seen by the header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def line(record) -> bytes:
    return json.dumps(record).encode() + b"\n"


GOOD = [qa_record(None, [(f"Question {i}?", f"Answer {i}.")]) for i in range(6)]
CONV = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]
HOSTILE_LINES = {  # (annotation line, counter)
    "nested": (b'{"conversations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "bad_record"),
    "not_utf8": (b'{"conversations": "\xff\xfe caf\xe9"}\n', "bad_record"),
    "not_an_object": (b"[1, 2, 3]\n", "bad_record"),
    "conversations_string": (line({"conversations": "human: hi gpt: yo"}), "bad_conversation"),
    "turns_strings": (line({"conversations": ["hi", "yo"]}), "bad_conversation"),
    "value_number": (line({"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "a"}]}),
                     "bad_conversation"),
    "system_dict": (line({"conversations": [{"from": "system", "value": {"x": 1}}, *CONV[:1], CONV[1]]}),
                    "bad_conversation"),
    "surrogate": (b'{"conversations": [{"from": "human", "value": "q \\ud800"}, {"from": "gpt", "value": "a"}]}\n',
                  "bad_conversation"),
    "image_number": (line({"image": 7, "conversations": CONV}), "bad_record"),
    "image_list_number": (line({"image": ["img_0000.png", 3], "conversations": CONV}), "bad_record"),
    "bomb": (line({"image": "bomb.png", "conversations": CONV}), "oversized_image"),
    "pil_bomb": (line({"image": "pil_bomb.png", "conversations": CONV}), "oversized_image"),
    "tall": (line({"image": "tall.png", "conversations": CONV}), "extreme_aspect_ratio"),
    "eps": (line({"image": "eps.png", "conversations": CONV}), "unsupported_image_format"),
}


@pytest.fixture(scope="module")
def tok():
    return build_byte_bpe_tokenizer()


@pytest.fixture(scope="module")
def hostile_meta(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("sft_hostile"))
    write_color_images(folder, [(40, 30)])
    files = {"bomb.png": png_claiming(10_000, 10_000),  # 100M pixels > max_image_pixels
             "pil_bomb.png": png_claiming(30_000, 30_000),  # beyond PIL's own bomb limit: raised at open
             "eps.png": EPS, "sixteen.png": gradient_16bit()[0]}
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    Image.new("RGB", (2, 400)).save(os.path.join(folder, "tall.png"))
    good = [line(r) for r in GOOD] + [line(qa_record("sixteen.png", [("<image>\nGrey?", "Yes.")]))]
    with open(os.path.join(folder, "hostile.jsonl"), "wb") as f:
        f.write(b"".join(good[:2]) + b"\n" + b"".join(bad for bad, _ in HOSTILE_LINES.values()) + b"".join(good[2:]))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"hostile": {"root": ".", "annotation": "hostile.jsonl"}}, f)
    return os.path.join(folder, "meta.json")


def make(meta: str, tok, dynamic: bool = True, **cfg):
    c = SftDataConfig(meta_path=meta, num_image_token=NIT, **cfg)
    return build_sft_loader(c, tok, rank=0, world_size=1, micro_batch_size=1, seed=0, num_image_token=NIT,
                            image_size=SIZE, template="internvl2_5", max_tiles=4, dynamic=dynamic)


def expected_counts() -> Counter:
    return Counter(reason for _, reason in HOSTILE_LINES.values())


def test_each_hostile_record_is_skipped_with_its_reason(hostile_meta, tok, fake_ghostscript):
    loader = make(hostile_meta, tok, num_workers=0)
    assert len(loader.source) == len(GOOD) + 1 + len(HOSTILE_LINES)
    outcomes = [loader._encode(i) for i in range(len(loader.source))]  # what the loader does per record
    reasons = Counter(o[0] for o in outcomes if not isinstance(o, EncodedSample))
    assert reasons == expected_counts()
    assert sum(isinstance(o, EncodedSample) for o in outcomes) == len(GOOD) + 1
    assert not os.path.exists(fake_ghostscript)


def test_loader_runs_on_through_epochs_and_counts(hostile_meta, tok, fake_ghostscript):
    loader = make(hostile_meta, tok, num_workers=2, max_consecutive_failures=50)
    while loader.epoch < 2:
        loader.next_batch()
    got = {k.split("/")[-1]: v for k, v in loader.metrics().items() if "/skipped/" in k}
    for reason, n in expected_counts().items():  # two whole epochs, maybe part of the third
        assert 2 * n <= got[reason] <= 3 * n, reason
    assert set(got) == set(expected_counts())
    assert not os.path.exists(fake_ghostscript)


def test_messages_name_the_file_and_line(hostile_meta, tok):
    loader = make(hostile_meta, tok, num_workers=0)
    annotation = os.path.join(os.path.dirname(hostile_meta), "hostile.jsonl")
    details = {o[1] for o in (loader._encode(i) for i in range(len(loader.source))) if isinstance(o, tuple)}
    # lines 1-2 good, line 3 blank, then the hostile lines in order
    assert any(f"{annotation} line 4: JSON nested too deeply" in d for d in details)
    assert any(f"{annotation} line 5: not UTF-8" in d and "re-encode" in d for d in details)
    assert any(f"{annotation} line 6: not a JSON object" in d for d in details)
    assert any("bomb.png" in d and "max_image_pixels" in d for d in details)


def test_16bit_image_is_scaled_to_8_bits(hostile_meta, tok):
    loader = make(hostile_meta, tok, num_workers=0, dynamic=False)
    record, spec = {"image": "sixteen.png", "conversations": CONV}, loader.source.specs[0]
    pixels = loader.encoder.encode(record, spec).pixel_values  # ImageNet-normalised, one tile
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    grey = (pixels[0].mean(dim=(1, 2)).numpy() * std + mean).mean()
    assert 0.4 < grey < 0.6  # a 0..255 gradient averages mid-grey; clipping at 255 gives ~1.0


def test_meta_file_with_wrong_types_is_refused_at_start(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD[0]) + "\n")
    for entry, message in (({"root": ".", "annotation": "a.jsonl", "max_dynamic_patch": "6"}, "max_dynamic_patch"),
                           ({"root": ".", "annotation": "a.jsonl", "repeat_time": "2"}, "repeat_time"),
                           ({"root": 3, "annotation": "a.jsonl"}, "root"), ("a.jsonl", "must be an object")):
        (tmp_path / "meta.json").write_text(json.dumps({"d": entry}))
        with pytest.raises(ValueError, match=message):
            make(str(tmp_path / "meta.json"), tok, num_workers=0)


def test_llava_list_with_non_objects(tmp_path, tok):
    names = write_color_images(str(tmp_path / "imgs"), [(40, 30)])
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([1, "x", qa_record(names[0], [("What?", "A colour.")]), None, GOOD[0]]))
    c = SftDataConfig(llava_json=str(path), image_root=str(tmp_path / "imgs"))
    loader = build_sft_loader(c, tok, 0, 1, 1, 0, NIT, SIZE, template="vicuna_v1")
    outcomes = [loader._encode(i) for i in range(len(loader.source))]
    assert [o[0] if isinstance(o, tuple) else "ok" for o in outcomes] == ["bad_record"] * 2 + ["ok"] + [
        "bad_record", "ok"]
