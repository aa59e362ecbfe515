"""Readers of the layouts public evaluation sets come in, as rows for `eval_sets.PairEvalSet`.

Formats (`EvalSetConfig.format`; None = csv or shards, whichever is set):
- `imagenet_folder`: `root/<class folder>/<image>`; sorted folder order = label index (torchvision's
  ImageFolder, clip_benchmark). Folders named by WordNet id (n01440764, ...) take open_clip's 1000 ImageNet
  class names in that order; other folder names are the class names ("_" read as a space).
- `karpathy`: Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`): {"images": [{"filepath"?,
  "filename", "split", "sentences": [{"raw"}]}]}; images under `root/<filepath>/<filename>`; `split` picks
  the images (comma-separated for several: "train,restval").
- `coco_captions`: COCO caption annotations (`captions_val2014.json`): {"images": [{"id", "file_name"}],
  "annotations": [{"image_id", "caption"}]}; images under `root/<file_name>`.

A row is a dict {"__key__", "__path__", "txt", "cls"?}: one row per (image, caption), and the key is the
IMAGE's (its path under root), so the captions of one image share it and retrieval counts the image once.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator, Optional, Sequence

FORMATS = ("csv", "shards", "imagenet_folder", "karpathy", "coco_captions")
CLASSNAME_SETS = ("imagenet",)
TEMPLATE_SETS = ("openai", "simple")
_WNID = re.compile(r"n\d{8}")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

Row = dict


class EvalFormatError(ValueError):
    """A malformed annotation file or folder; the message names the file and the fix."""


def resolve_format(cfg: Any) -> str:
    return cfg.format or ("shards" if cfg.shards else "csv")


def named_classnames(name: str) -> list[str]:
    """A built-in class-name list: 'imagenet' = open_clip's IMAGENET_CLASSNAMES (1000, label order)."""
    if name not in CLASSNAME_SETS:
        raise EvalFormatError(f"classnames: {name!r} is not a built-in list {CLASSNAME_SETS}; "
                              "use classnames_file for your own")
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def named_templates(name: str) -> list[Callable[[str], str]]:
    """'openai' = the 80 prompts of CLIP's ImageNet evaluation, 'simple' = open_clip's 2 (both callables)."""
    if name not in TEMPLATE_SETS:
        raise EvalFormatError(f"templates: {name!r} is not a built-in set {TEMPLATE_SETS}; "
                              "use templates_file for your own")
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES if name == "openai" else SIMPLE_IMAGENET_TEMPLATES)


# ---- ImageNet-style class folders ----------------------------------------------------------------
def class_folders(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise EvalFormatError(f"{root}: not a directory (imagenet_folder needs root/<class>/<image>)")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise EvalFormatError(f"{root}: no class folders; expected root/<wnid or class name>/<image>. For the "
                              "flat ImageNet val/ layout, sort the images into class folders (e.g. with the "
                              "devkit's valprep.sh) or write a CSV image,label")
    return folders


def folder_classnames(root: str, folders: Sequence[str], given: Optional[list[str]]) -> list[str]:
    """Class names of the sorted folders: `given` (one per folder), ImageNet's for 1000 WordNet-id
    folders, else the folder names."""
    if given is not None:
        if len(given) != len(folders):
            raise EvalFormatError(f"{root}: {len(folders)} class folders but {len(given)} class names: the "
                                  "names must list one class per folder, in sorted folder order")
        return given
    if all(_WNID.fullmatch(f) for f in folders):
        if len(folders) != 1000:
            raise EvalFormatError(f"{root}: {len(folders)} WordNet-id folders; the ImageNet class names need all "
                                  "1000 (sorted wnid order = label), or set classnames_file (one name per folder)")
        return named_classnames("imagenet")
    return [f.replace("_", " ") for f in folders]


def imagenet_folder_rows(root: str, folders: Sequence[str], classnames: Sequence[str]) -> Iterator[Row]:
    for label, folder in enumerate(folders):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.lower().endswith(_IMAGE_SUFFIXES):
                key = f"{folder}/{name}"
                yield {"__key__": key, "__path__": os.path.join(root, key), "txt": classnames[label].encode(),
                       "cls": str(label).encode()}


# ---- caption annotation files --------------------------------------------------------------------
def _load_json(path: str, layout: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise EvalFormatError(f"{path}: cannot read it as JSON ({exc}); expected {layout}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalFormatError(f"{path}: no top-level \"images\" list; expected {layout}")
    return data


KARPATHY_LAYOUT = ('the Karpathy split ({"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}, '
                   'e.g. dataset_flickr30k.json)')
COCO_LAYOUT = ('COCO caption annotations ({"images": [{"id", "file_name"}], "annotations": [{"image_id", '
               '"caption"}]}, e.g. captions_val2014.json)')


def _sentence(path: str, i: int, sentence: Any) -> str:
    if isinstance(sentence, dict) and isinstance(sentence.get("raw"), str):
        return sentence["raw"]
    if isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
        return " ".join(map(str, sentence["tokens"]))
    raise EvalFormatError(f"{path}: images[{i}].sentences holds {sentence!r}: each sentence needs a \"raw\" "
                          f"string; expected {KARPATHY_LAYOUT}")


def karpathy_rows(path: str, root: str, split: str) -> list[Row]:
    """One row per sentence of the images of `split`, keyed by the image's path under root."""
    images = _load_json(path, KARPATHY_LAYOUT)["images"]
    wanted = {s.strip() for s in split.split(",") if s.strip()}
    rows, seen = [], set()
    for i, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("filename"), str) \
                or not isinstance(image.get("sentences"), list):
            raise EvalFormatError(f"{path}: images[{i}] needs a \"filename\" string and a \"sentences\" list; "
                                  f"expected {KARPATHY_LAYOUT}")
        seen.add(str(image.get("split")))
        if str(image.get("split")) not in wanted:
            continue
        key = os.path.join(image.get("filepath") or "", image["filename"])
        for sentence in image["sentences"]:
            rows.append({"__key__": key, "__path__": os.path.join(root, key),
                         "txt": _sentence(path, i, sentence).encode()})
    if not rows:
        raise EvalFormatError(f"{path}: no captioned image in split {split!r}; splits present: {sorted(seen)} "
                              "(set split: to one of them)")
    return rows


def coco_caption_rows(path: str, root: str) -> list[Row]:
    """One row per annotation, images in the file's order, each image's captions in annotation order."""
    data = _load_json(path, COCO_LAYOUT)
    if not isinstance(data.get("annotations"), list):
        raise EvalFormatError(f"{path}: no \"annotations\" list; expected {COCO_LAYOUT} (instances_*.json "
                              "holds boxes, not captions)")
    files: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise EvalFormatError(f"{path}: images[{i}] needs \"id\" and a \"file_name\" string; "
                                  f"expected {COCO_LAYOUT}")
        files[image["id"]] = image["file_name"]
    captions: dict[Any, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise EvalFormatError(f"{path}: annotations[{i}] needs a \"caption\" string; expected {COCO_LAYOUT}")
        if ann.get("image_id") not in files:
            raise EvalFormatError(f"{path}: annotations[{i}] refers to image_id {ann.get('image_id')!r}, which "
                                  "is not in \"images\": use the images list of the same annotation file")
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    rows = [{"__key__": files[image_id], "__path__": os.path.join(root, files[image_id]), "txt": c.encode()}
            for image_id in files for c in captions.get(image_id, [])]
    if not rows:
        raise EvalFormatError(f"{path}: no annotation; expected {COCO_LAYOUT}")
    return rows


def default_set_name(fmt: str, annotation: Optional[str]) -> str:
    """'flickr30k' for dataset_flickr30k.json, 'coco' for dataset_coco.json / captions_*.json, 'imagenet'."""
    if fmt == "imagenet_folder":
        return "imagenet"
    stem = os.path.splitext(os.path.basename(annotation or ""))[0].lower()
    if fmt == "coco_captions" or stem.startswith("captions_"):
        return "coco"
    return stem[len("dataset_"):] if stem.startswith("dataset_") else (stem or fmt)
