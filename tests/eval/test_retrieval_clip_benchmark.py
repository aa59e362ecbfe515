"""Retrieval recall@1/5/10 against LAION-AI/CLIP_benchmark (pip package clip_benchmark,
clip_benchmark/metrics/zeroshot_retrieval.py: `recall_at_k` = torch.topk on the score matrix and the
positive-pair mask, a hit when it finds > 0 positives), on score matrices full of ties and several
captions per image: difference 0."""
from __future__ import annotations

import pytest
import torch

from internvl_train.eval.retrieval import gather_retrieval_inputs, retrieval_metrics, topk_hits

zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


def random_case(seed: int, n_img: int, max_caps: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N_txt, N_img] with few distinct values: many ties, text_to_image [N_txt])."""
    g = torch.Generator().manual_seed(seed)
    caps = torch.randint(1, max_caps + 1, (n_img,), generator=g)
    text_to_image = torch.repeat_interleave(torch.arange(n_img), caps)
    scores = torch.randint(0, levels, (text_to_image.numel(), n_img), generator=g).float() / levels
    return scores, text_to_image


def clip_benchmark_recalls(scores: torch.Tensor, text_to_image: torch.Tensor, ks, batch: int) -> dict[str, float]:
    """Lines of clip_benchmark's evaluate() after the score matrix: positive pairs, batchify(recall_at_k) > 0."""
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), text_to_image] = True
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = (zr.batchify(zr.recall_at_k, scores, positive_pairs, batch, "cpu", k=k) > 0).float().mean().item()
        out[f"i2t_R@{k}"] = (zr.batchify(zr.recall_at_k, scores.T, positive_pairs.T, batch, "cpu", k=k) > 0).float().mean().item()
    return out


@pytest.mark.parametrize("seed, n_img, max_caps, levels", [
    (0, 12, 5, 2), (1, 40, 5, 3), (2, 100, 3, 4), (3, 700, 5, 5), (4, 30, 1, 1), (5, 257, 6, 2),
])
def test_score_matrix_recall_equals_clip_benchmark(seed: int, n_img: int, max_caps: int, levels: int) -> None:
    scores, text_to_image = random_case(seed, n_img, max_caps, levels)
    ks = (1, 5, 10)
    ref = clip_benchmark_recalls(scores, text_to_image, ks, batch=64)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), text_to_image] = True
    for name, s, p in (("t2i", scores, positive), ("i2t", scores.T.contiguous(), positive.T.contiguous())):
        for chunk in (7, 1024):
            hits = torch.cat([topk_hits(s[i:i + chunk], p[i:i + chunk], ks) for i in range(0, len(s), chunk)], dim=1)
            for k, hit in zip(ks, hits):
                assert hit.float().mean().item() == ref[f"{name}_R@{k}"], (name, k, chunk)


class _Tokens(list):
    def to(self, device):
        return torch.tensor(self)


class _LookupModel:
    """encode_image(image indices) / encode_text(caption indices) -> fixed embeddings."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        self.images, self.texts = images, texts

    def encode_image(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    def encode_text(self, idx: torch.Tensor) -> torch.Tensor:
        return self.texts[idx]


def four_hot(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """Rows with four ones: normalised entries are exactly 0.5, dot products exact multiples of 1/4 in any
    summation order, so ties are exact for both implementations."""
    rows = torch.zeros(n, dim)
    for r in range(n):
        rows[r, torch.randperm(dim, generator=g)[:4]] = 1.0
    return rows / 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_end_to_end_equals_clip_benchmark_evaluate_with_images_keyed_by_image(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n_img, dim = 37, 7
    images = four_hot(n_img, dim, g)
    caps = torch.randint(1, 6, (n_img,), generator=g)
    text_to_image = torch.repeat_interleave(torch.arange(n_img), caps)
    texts = four_hot(len(text_to_image), dim, g)
    # clip_benchmark's own evaluate(): a dataset of images, each with its list of captions
    captions_of = [torch.nonzero(text_to_image == i).flatten().tolist() for i in range(n_img)]
    loader = [(torch.arange(s, min(s + 8, n_img)), [captions_of[i] for i in range(s, min(s + 8, n_img))])
              for s in range(0, n_img, 8)]
    ref = zr.evaluate(_LookupModel(images, texts), loader, lambda caps_: _Tokens(caps_), "cpu", amp=False,
                      recall_k_list=[1, 5, 10])
    # ours, fed as an eval set is: one row per (image, caption) pair, the image embedding repeated per caption
    image_ids = 1000 + text_to_image  # ids, not row numbers
    img, txt, t2i = gather_retrieval_inputs(images[text_to_image], image_ids, texts, image_ids)
    assert img.shape[0] == n_img  # one image per image id, not one per caption row
    ours = retrieval_metrics(img, txt, t2i, chunk_size=5)
    for k in (1, 5, 10):
        assert ours[f"t2i_R@{k}"] == 100.0 * ref[f"image_retrieval_recall@{k}"]
        assert ours[f"i2t_R@{k}"] == 100.0 * ref[f"text_retrieval_recall@{k}"]
    pessimistic = retrieval_metrics(img, txt, t2i, ties="pessimistic")
    assert all(pessimistic[key] <= ours[key] for key in ours)  # the option is a lower bound


def test_unknown_tie_rule_rejected() -> None:
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(torch.eye(2), torch.eye(2), torch.arange(2), ties="optimistic")
