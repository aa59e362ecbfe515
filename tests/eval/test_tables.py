"""Paper-style results tables: column names, rounding, captioning x100, missing / NaN cells."""
from __future__ import annotations

import math

import pytest

from internvl_train.eval.tables import column_name, render_table, rows_by_encoder


def test_column_names_follow_the_paper() -> None:
    assert column_name("flickr30k/i2t_R@1") == "Flickr30K I->T R@1"
    assert column_name("coco/t2i_R@10") == "COCO T->I R@10"
    assert column_name("imagenet/zeroshot_top1") == "ImageNet-1K top-1"
    assert column_name("coco_caption/caption/cider") == "COCO Caption CIDEr"
    assert column_name("myset/zeroshot_mean_per_class_recall") == "myset mean per-class recall"
    assert column_name("vqa/vqav2_accuracy") == "vqa VQAv2 accuracy" and column_name("loss") == "loss"


def test_markdown_table_from_stage_metrics() -> None:
    metrics = {"flickr30k/c/i2t_R@1": 94.71, "flickr30k/g/i2t_R@1": 95.74, "flickr30k/c/t2i_R@1": 81.66,
               "flickr30k/c/zeroshot_top5": math.nan, "coco_caption/caption/cider": 1.2845}
    table = render_table(rows_by_encoder(metrics))
    lines = table.splitlines()
    assert lines[0] == "|  | Flickr30K I->T R@1 | Flickr30K T->I R@1 | Flickr30K top-5 | COCO Caption CIDEr |"
    assert lines[2] == "| InternVL-C | 94.7 | 81.7 | - | - |"
    assert lines[3] == "| InternVL-G | 95.7 | - | - | - |"
    assert lines[4] == "| model | - | - | - | 128.4 |"  # CIDEr on the paper's scale


def test_plain_table_columns_and_digits() -> None:
    text = render_table({"run": {"flickr30k/i2t_R@5": 99.123}}, columns=["flickr30k/i2t_R@5"], digits=2, style="plain")
    assert text.splitlines() == ["     Flickr30K I->T R@5", "run  99.12"]
    with pytest.raises(ValueError, match="style"):
        render_table({}, style="html")
