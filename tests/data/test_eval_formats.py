"""Eval-set layouts of the public benchmarks (ImageNet class folders, Karpathy JSON, COCO captions JSON, a
caption-less ImageNet CSV): tiny generated fixtures read by the reader and by stage-1 evaluation."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines.config import EvalSetConfig
from data_pipelines.eval_formats import EvalFormatError
from data_pipelines.eval_sets import build_pair_eval_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def write_image(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12 + i, 10), COLORS[i % len(COLORS)]).save(path)


def write_karpathy(folder: Path, n_test: int = 3, n_train: int = 1, per_image: int = 5) -> tuple[Path, Path]:
    """dataset_flickr30k.json-style file (no filepath, like Flickr30K) and its image folder."""
    images, root = [], folder / "flickr30k-images"
    for i in range(n_test + n_train):
        name = f"{1000 + i}.jpg"
        write_image(root / name, i)
        images.append({"filename": name, "imgid": i, "split": "test" if i < n_test else "train",
                       "sentences": [{"raw": f"image {i} caption {j}", "tokens": ["x"]} for j in range(per_image)]})
    annotation = folder / "dataset_flickr30k.json"
    annotation.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return annotation, root


def write_coco_captions(folder: Path) -> tuple[Path, Path]:
    root = folder / "val2014"
    images = [{"id": 42, "file_name": "COCO_val2014_42.jpg"}, {"id": 7, "file_name": "COCO_val2014_7.jpg"}]
    for i, image in enumerate(images):
        write_image(root / image["file_name"], i)
    annotations = [{"image_id": 7, "id": 1, "caption": "seven a"}, {"image_id": 42, "id": 2, "caption": "forty-two a"},
                   {"image_id": 7, "id": 3, "caption": "seven b"}, {"image_id": 42, "id": 4, "caption": "forty-two b"},
                   {"image_id": 42, "id": 5, "caption": "forty-two c"}]
    annotation = folder / "captions_val2014.json"
    annotation.write_text(json.dumps({"images": images, "annotations": annotations}))
    return annotation, root


def write_imagenet_val(folder: Path, filled: tuple[int, ...] = (0, 1, 999)) -> Path:
    """val/<wnid>/ for 1000 made-up WordNet ids (sorted order = label), images in the `filled` classes."""
    root = folder / "val"
    for label in range(1000):
        (root / f"n{label:08d}").mkdir(parents=True)
    for n, label in enumerate(filled):
        for j in range(2):
            write_image(root / f"n{label:08d}" / f"ILSVRC2012_val_{n}{j}.JPEG", n + j)
    return root


def read_all(cfg: EvalSetConfig, **kw) -> list[tuple[str, str, int]]:
    return [(k, c, int(label)) for b in build_pair_eval_set(cfg, image_size=16, **kw)
            for k, c, label in zip(b["keys"], b["captions"], b["labels"])]


# ---- readers -------------------------------------------------------------------------------------
def test_karpathy_rows_share_the_image_key_and_the_split_selects(tmp_path):
    annotation, root = write_karpathy(tmp_path)
    cfg = EvalSetConfig(name="flickr30k", format="karpathy", annotation=str(annotation), root=str(root), batch_size=4)
    rows = read_all(cfg)
    assert [c for _, c, _ in rows] == [f"image {i} caption {j}" for i in range(3) for j in range(5)]
    assert [k for k, _, _ in rows] == [f"{1000 + i}.jpg" for i in range(3) for _ in range(5)]
    assert {label for _, _, label in rows} == {-1}
    train = read_all(EvalSetConfig(name="t", format="karpathy", annotation=str(annotation), root=str(root),
                                   split="train"))
    assert [k for k, _, _ in train] == ["1003.jpg"] * 5
    parts = [read_all(cfg, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == sorted(rows)


def test_karpathy_decodes_each_image_once(tmp_path, monkeypatch):
    import data_pipelines.eval_sets as eval_sets

    annotation, root = write_karpathy(tmp_path)
    calls = []
    real = eval_sets.decode_image
    monkeypatch.setattr(eval_sets, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    batches = list(build_pair_eval_set(EvalSetConfig(name="f", format="karpathy", annotation=str(annotation),
                                                     root=str(root)), image_size=16))
    assert len(calls) == 3 and batches[0]["pixel_values"].shape[0] == 15
    assert not (batches[0]["pixel_values"][0] == batches[0]["pixel_values"][5]).all()  # not one image for all


def test_karpathy_with_filepath_and_a_missing_image(tmp_path):
    write_image(tmp_path / "val2014" / "a.jpg", 0)
    images = [{"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "a"}, {"raw": "b"}]},
              {"filepath": "val2014", "filename": "gone.jpg", "split": "test", "sentences": [{"raw": "c"}]}]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    eval_set = build_pair_eval_set(EvalSetConfig(name="coco", format="karpathy",
                                                 annotation=str(tmp_path / "dataset_coco.json"),
                                                 root=str(tmp_path)), image_size=16)
    assert [k for b in eval_set for k in b["keys"]] == ["val2014/a.jpg"] * 2
    assert eval_set.metrics() == {"data/eval/coco/skipped/missing_image": 1.0}


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read it as JSON"),
    ('{"annotations": []}', 'no top-level "images" list'),
    ('{"images": [{"filename": "a.jpg", "split": "test"}]}',
     r'images\[0\] needs a "filename" string and a "sentences"'),
    ('{"images": [{"filename": "a.jpg", "split": "test", "sentences": ["a dog"]}]}', 'each sentence needs a "raw"'),
    ('{"images": [{"filename": "a.jpg", "split": "val", "sentences": [{"raw": "a"}]}]}', r"splits present: \['val'\]"),
])
def test_malformed_karpathy_files_name_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(content)
    with pytest.raises(EvalFormatError, match=message) as err:
        build_pair_eval_set(EvalSetConfig(name="f", format="karpathy", annotation=str(path), root=str(tmp_path)), 16)
    assert str(path) in str(err.value)


def test_coco_captions_group_by_image_in_image_order(tmp_path):
    annotation, root = write_coco_captions(tmp_path)
    rows = read_all(EvalSetConfig(name="coco", format="coco_captions", annotation=str(annotation), root=str(root)))
    assert rows == [("COCO_val2014_42.jpg", "forty-two a", -1), ("COCO_val2014_42.jpg", "forty-two b", -1),
                    ("COCO_val2014_42.jpg", "forty-two c", -1), ("COCO_val2014_7.jpg", "seven a", -1),
                    ("COCO_val2014_7.jpg", "seven b", -1)]


@pytest.mark.parametrize("data, message", [
    ({"images": [{"id": 1, "file_name": "a.jpg"}]}, r'no "annotations" list.*instances_'),
    ({"images": [{"id": 1}], "annotations": []}, r'images\[0\] needs "id" and a "file_name"'),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]},
     r"annotations\[0\] refers to image_id 2"),
])
def test_malformed_coco_caption_files_name_the_file_and_the_fix(tmp_path, data, message):
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EvalFormatError, match=message) as err:
        build_pair_eval_set(EvalSetConfig(name="c", format="coco_captions", annotation=str(path),
                                          root=str(tmp_path)), 16)
    assert str(path) in str(err.value)


def test_imagenet_wnid_folders_get_the_imagenet_class_names_in_sorted_order(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    root = write_imagenet_val(tmp_path)
    eval_set = build_pair_eval_set(EvalSetConfig(name="imagenet", format="imagenet_folder", root=str(root)), 16)
    assert eval_set.classnames == list(IMAGENET_CLASSNAMES)
    assert eval_set.templates == list(OPENAI_IMAGENET_TEMPLATES)  # the default: CLIP's 80 prompts
    rows = [(k, c, int(label)) for b in eval_set for k, c, label in zip(b["keys"], b["captions"], b["labels"])]
    assert [label for _, _, label in rows] == [0, 0, 1, 1, 999, 999]
    assert rows[0] == ("n00000000/ILSVRC2012_val_00.JPEG", IMAGENET_CLASSNAMES[0], 0)
    assert rows[-1][1] == IMAGENET_CLASSNAMES[999]


def test_imagenet_folder_names_templates_and_errors(tmp_path):
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    for i, name in enumerate(["golden_retriever", "tabby_cat"]):
        write_image(tmp_path / "named" / name / "x.png", i)
    named = build_pair_eval_set(EvalSetConfig(name="n", format="imagenet_folder", root=str(tmp_path / "named"),
                                              templates="simple"), 16)
    assert named.classnames == ["golden retriever", "tabby cat"] and named.templates == list(SIMPLE_IMAGENET_TEMPLATES)
    for label in range(5):
        write_image(tmp_path / "subset" / f"n{label:08d}" / "x.png", label)
    with pytest.raises(EvalFormatError, match="5 WordNet-id folders.*all 1000.*classnames_file"):
        build_pair_eval_set(EvalSetConfig(name="s", format="imagenet_folder", root=str(tmp_path / "subset")), 16)
    with pytest.raises(EvalFormatError, match="5 class folders but 1000 class names"):
        build_pair_eval_set(EvalSetConfig(name="s", format="imagenet_folder", root=str(tmp_path / "subset"),
                                          classnames="imagenet"), 16)
    (tmp_path / "flat").mkdir()
    with pytest.raises(EvalFormatError, match="no class folders.*valprep"):
        build_pair_eval_set(EvalSetConfig(name="s", format="imagenet_folder", root=str(tmp_path / "flat")), 16)


def test_imagenet_style_csv_without_captions_is_captioned_by_class_name(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    with open(tmp_path / "val.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        for i, label in enumerate([3, 500]):
            write_image(tmp_path / f"{i}.png", i)
            writer.writerow([f"{i}.png", label])
    cfg = EvalSetConfig(name="imagenet", csv=str(tmp_path / "val.csv"), classnames="imagenet", templates="openai")
    assert read_all(cfg) == [("0.png", IMAGENET_CLASSNAMES[3], 3), ("1.png", IMAGENET_CLASSNAMES[500], 500)]
    eval_set = build_pair_eval_set(EvalSetConfig(name="x", csv=str(tmp_path / "val.csv")), 16)
    assert list(eval_set) == [] and eval_set.metrics() == {"data/eval/x/skipped/empty_caption": 2.0}


def test_config_validation_of_the_formats(tmp_path):
    from data_pipelines.config import validate_eval_set
    from internvl_train.errors import ConfigError, qualified

    annotation, root = write_karpathy(tmp_path)
    validate_eval_set(EvalSetConfig(name="f", format="karpathy", annotation=str(annotation), root=str(root)))
    validate_eval_set(EvalSetConfig(name="i", format="imagenet_folder", root=str(root), templates="simple"))
    bad = [(dict(format="karpathy", annotation=str(annotation)), "e.root", "needs root"),
           (dict(format="karpathy", annotation=str(annotation) + ".x", root=str(root)), "e", "file not found"),
           (dict(format="imagenet_folder", root=str(root / "nope")), "e.root", "directory not found"),
           (dict(format="folder", root=str(root)), "e.format", "not one of"),
           (dict(format="imagenet_folder", root=str(root), templates="fancy"), "e.templates", "not one of"),
           (dict(csv=str(annotation), templates="openai"), "e", "templates without class names"),
           (dict(), "e", "exactly one")]
    for fields, key, message in bad:
        with pytest.raises(ConfigError, match=message) as err:
            with qualified("e"):  # keys are relative to the eval set: the caller names it
                validate_eval_set(EvalSetConfig(name="x", **fields))
        assert err.value.key == key


# ---- stage-1 evaluation end to end ---------------------------------------------------------------
def test_stage1_evaluation_on_karpathy_coco_and_imagenet_fixtures(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import internvl_train.stages.image_text_eval as image_text_eval
    from generative_helpers import compose_run
    from internvl_train.engine.stage_api import DistInfo
    from internvl_train.stages.contrastive import ContrastiveStage

    flickr, flickr_root = write_karpathy(tmp_path / "f")
    coco, coco_root = write_coco_captions(tmp_path / "c")
    imagenet = write_imagenet_val(tmp_path / "i")
    sets = (f"[{{name: flickr30k, format: karpathy, annotation: {flickr}, root: {flickr_root}, batch_size: 4}},"
            f"{{name: coco, format: coco_captions, annotation: {coco}, root: {coco_root}}},"
            f"{{name: imagenet, format: imagenet_folder, root: {imagenet}, templates: simple}}]")
    cfg = compose_run(["stage=contrastive", f"run_dir={tmp_path / 'run'}", "logger=none", "data.num_workers=0",
                       f"data.eval_sets={sets}"])
    OmegaConf.resolve(cfg)  # as the app does
    shapes = []
    real = image_text_eval.retrieval_metrics
    monkeypatch.setattr(image_text_eval, "retrieval_metrics",
                        lambda img, txt, t2i, **k: shapes.append((img.shape[0], txt.shape[0]))
                        or real(img, txt, t2i, **k))
    stage = ContrastiveStage(cfg, DistInfo())
    metrics = stage.evaluate(stage.build_model().eval())
    assert shapes == [(3, 15), (2, 5), (6, 6)]  # images counted once; one row per caption
    for name in ("flickr30k", "coco", "imagenet"):
        assert 0 <= metrics[f"{name}/c/i2t_R@1"] <= metrics[f"{name}/c/i2t_R@10"] <= 100.0
    assert metrics["imagenet/c/zeroshot_top5_chance"] == pytest.approx(0.5)  # 5 of the 1000 ImageNet classes
    assert "flickr30k/c/zeroshot_top1" not in metrics
