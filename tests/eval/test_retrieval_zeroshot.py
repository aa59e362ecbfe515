"""Retrieval recall on hand-made embeddings with known ranks, and zero-shot top-k on a hand-made case."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internvl_train.eval.retrieval import retrieval_metrics
from internvl_train.eval.zeroshot import zero_shot_accuracy, zero_shot_classifier


def one_hot(rows: list[int], dim: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(rows), dim).float()


def known_rank_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """12 images on orthogonal axes; caption t of image i points at image (i + shift_i) mostly, with a
    component on its own axis chosen so its rank among images is exactly r_i."""
    n, dim = 12, 12
    images = torch.eye(n)
    ranks = [0, 0, 1, 2, 4, 5, 9, 10, 0, 3, 6, 11]
    texts = []
    for i, r in enumerate(ranks):
        t = torch.zeros(dim)
        t[i] = 1.0
        for j in range(1, r + 1):  # r other images score strictly higher than the own one
            t[(i + j) % n] = 1.0 + 0.1 * j
        texts.append(t)
    return images, torch.stack(texts), torch.tensor(ranks)


@pytest.mark.parametrize("chunk", [1, 5, 12, 1000])
def test_text_to_image_ranks_known_and_chunk_independent(chunk: int) -> None:
    images, texts, ranks = known_rank_case()
    m = retrieval_metrics(images, texts, torch.arange(12), chunk_size=chunk)
    for k in (1, 5, 10):
        assert m[f"t2i_R@{k}"] == pytest.approx(100 * (ranks < k).float().mean().item())
    assert m["t2i_R@1"] == pytest.approx(100 * 3 / 12)
    assert m["mean_recall"] == pytest.approx((m["i2t_mean"] + m["t2i_mean"]) / 2)


def test_multiple_captions_per_image_best_caption_counts() -> None:
    images = torch.eye(3)
    # image 0 has captions 0 (bad: points at image 2) and 1 (good); image 1 caption 2; image 2 caption 3
    texts = one_hot([2, 0, 1, 2], 3)
    texts[0, 0] = 0.5  # bad caption of image 0 still mentions it a little
    text_to_image = torch.tensor([0, 0, 1, 2])
    for chunk in (1, 2, 3):
        m = retrieval_metrics(images, texts, text_to_image, ks=(1, 2), chunk_size=chunk, ties="pessimistic")
        # i2t: image 0's best caption (row 1) is top; image 2: captions 3 and 0 both score 1 -> 0 is a
        # non-matching tie counted against -> rank 1
        assert m["i2t_R@1"] == pytest.approx(100 * 2 / 3)
        assert m["i2t_R@2"] == pytest.approx(100.0)
        # t2i: caption 0 ranks image 2 above image 0 -> rank 1; the rest rank 0
        assert m["t2i_R@1"] == pytest.approx(75.0)


def test_pessimistic_ties_score_collapsed_embeddings_zero() -> None:
    m = retrieval_metrics(torch.ones(4, 3), torch.ones(4, 3), torch.arange(4), ks=(1,), ties="pessimistic")
    assert m["i2t_R@1"] == 0.0 and m["t2i_R@1"] == 0.0


def test_bad_mapping_rejected() -> None:
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_metrics(torch.eye(2), torch.eye(2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 0]))


def test_zero_shot_classifier_and_topk() -> None:
    classes = ["cat", "dog", "car", "tree", "boat", "cup", "hat"]
    axis = {c: i for i, c in enumerate(classes)}
    calls = []

    def encode_text(texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        # each prompt points at its class axis plus a template-specific nuisance on the last axis
        return torch.stack([F.one_hot(torch.tensor(axis[t.split()[-1]]), 8).float() * 2 + (len(t) % 3) * torch.eye(8)[7] for t in texts])

    clf = zero_shot_classifier(encode_text, classes, ["a photo of {}", "art of {}"], classes_per_batch=3)
    assert clf.shape == (8, 7) and calls == [6, 6, 2]
    assert torch.allclose(clf.norm(dim=0), torch.ones(7))
    assert (clf[:7].argmax(dim=0) == torch.arange(7)).all()
    images = F.normalize(torch.eye(8)[[0, 1, 2, 3]] + 0.6 * torch.eye(8)[[1, 0, 4, 5]], dim=-1)
    labels = torch.tensor([0, 1, 4, 6])  # correct, correct, 2nd best, absent from the image -> tie-ranked low
    m = zero_shot_accuracy(images, labels, clf, ks=(1, 2, 5), ties="pessimistic")
    assert m["top1"] == pytest.approx(50.0) and m["top2"] == pytest.approx(75.0)
    assert m["top5"] == pytest.approx(75.0)  # class 6 ties with 4 other zero-score classes: rank 6
    assert m["top1_chance"] == pytest.approx(100 / 7) and m["top5_chance"] == pytest.approx(500 / 7)
    assert m["mean_per_class_recall"] == pytest.approx(50.0)  # classes 0, 1 right; 4, 6 wrong
    default = zero_shot_accuracy(images, labels, clf, ks=(1, 2, 5))  # topk: the 5-way tie may fall inside
    assert default["top1"] == pytest.approx(50.0) and default["top5"] in (75.0, 100.0)
