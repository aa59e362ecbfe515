"""2 real gloo ranks: uneven evaluation shards gather into the single-process metrics."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from internvl_train.eval.retrieval import gather_retrieval_inputs, retrieval_metrics
from internvl_train.eval.zeroshot import zero_shot_accuracy

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "losses"))  # the gloo launcher lives there
from tiny_towers import run_on_ranks  # noqa: E402


def _data() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    images = F.normalize(torch.randn(7, 5), dim=-1)
    text_to_image = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 6])
    texts = F.normalize(images[text_to_image] + 0.8 * torch.randn(11, 5), dim=-1)
    return images, texts, text_to_image


def _eval_worker(rank: int, world: int) -> None:
    images, texts, text_to_image = _data()
    image_ids = torch.arange(7) * 10  # arbitrary ids, not row numbers
    # rank 0: images 0-3, rank 1: images 3-6 (image 3 duplicated, as a padding sampler would); texts 0-5 / 6-10
    img_rows = [torch.arange(0, 4), torch.arange(3, 7)][rank]
    txt_rows = [torch.arange(0, 6), torch.arange(6, 11)][rank]
    g_img, g_txt, g_map = gather_retrieval_inputs(
        images[img_rows], image_ids[img_rows], texts[txt_rows], image_ids[text_to_image[txt_rows]]
    )
    assert retrieval_metrics(g_img, g_txt, g_map, chunk_size=3) == retrieval_metrics(images, texts, text_to_image)
    classifier = torch.eye(5)[:, :4]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    own = img_rows if rank == 0 else img_rows[1:]  # rank 1 leaves out its duplicate of image 3
    local = zero_shot_accuracy(images[own], labels[own], classifier, ks=(1, 2))
    both_ranks_all_images = zero_shot_accuracy(images, labels, classifier, ks=(1, 2))  # every image twice
    assert local["n_images"] == 7 and both_ranks_all_images["n_images"] == 14
    for key in ("top1", "top2", "top1_chance", "top2_chance", "mean_per_class_recall"):
        assert local[key] == pytest.approx(both_ranks_all_images[key])


def test_eval_two_ranks_equal_one() -> None:
    run_on_ranks(_eval_worker, 2)
