"""Zero-shot top-1 / top-5 / mean per-class recall against LAION-AI/CLIP_benchmark's evaluate()
(pip package clip_benchmark, clip_benchmark/metrics/zeroshot_classification.py) with duplicate class names,
exact ties and fewer than 5 classes (acc5 = NaN there)."""
from __future__ import annotations

import math

import pytest
import torch

from internvl_train.eval.zeroshot import zero_shot_accuracy, zero_shot_classifier

zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")  # needs scikit-learn too


class _Tokens(list):
    def to(self, device):
        return self


class _Loader(list):
    """What evaluate() reads: iteration over (images, target) and .dataset.classes."""

    def __init__(self, batches, classes) -> None:
        super().__init__(batches)
        self.dataset = type("D", (), {"classes": classes})()


def four_hot(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """Normalised rows with entries 0 or exactly 0.5: every dot product is exact, ties are exact."""
    rows = torch.zeros(n, dim)
    for r in range(n):
        rows[r, torch.randperm(dim, generator=g)[:4]] = 1.0
    return rows / 2.0


def case(seed: int, classnames: list[str], n_images: int, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    name_emb = dict(zip(dict.fromkeys(classnames), four_hot(len(set(classnames)), dim, g)))
    images = four_hot(n_images, dim, g)
    labels = torch.randint(0, len(classnames), (n_images,), generator=g)
    encode = lambda texts: torch.stack([name_emb[t.removeprefix("a photo of ")] for t in texts])  # noqa: E731
    return images, labels, encode


class _Model:
    def __init__(self, images: torch.Tensor, encode) -> None:
        self.images, self.encode = images, encode

    def encode_image(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images[idx]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.encode(list(texts))


def clip_benchmark_accuracy(output, target, topk=(1,)):
    """clip_benchmark's accuracy() verbatim except its last line's float(ndarray of shape (1,)), which
    NumPy >= 2.x rejects ('only 0-dimensional arrays can be converted'): .item() gives the same number."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().item()) / n for k in topk]


CLASSES = {
    "duplicates": ["crane", "dog", "crane", "cat", "maillot", "maillot", "car"],
    "three_classes": ["cat", "dog", "car"],
    "five_with_dup": ["a", "b", "a", "c", "d"],
}


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_clip_benchmark_evaluate(name: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zc, "accuracy", clip_benchmark_accuracy)
    classnames = CLASSES[name]
    images, labels, encode = case(seed, classnames, n_images=60)
    loader = _Loader([(torch.arange(s, min(s + 16, 60)), labels[s:s + 16]) for s in range(0, 60, 16)], classnames)
    ref = zc.evaluate(_Model(images, encode), loader, lambda t: _Tokens(t), classnames, ["a photo of {c}"], "cpu",
                      amp=False)
    clf = zero_shot_classifier(encode, classnames, ["a photo of {}"], classes_per_batch=2)
    assert clf.shape[1] == len(classnames)
    ours = zero_shot_accuracy(images, labels, clf, ks=(1, 5))
    assert ours["top1"] == 100.0 * ref["acc1"]
    if len(classnames) < 5:
        assert math.isnan(ref["acc5"]) and math.isnan(ours["top5"]) and math.isnan(ours["top5_chance"])
    else:
        assert ours["top5"] == 100.0 * ref["acc5"]
    assert ours["mean_per_class_recall"] == pytest.approx(100.0 * ref["mean_per_class_recall"], abs=1e-9)


def test_duplicate_names_share_one_embedding_and_the_first_wins() -> None:
    # an encoder whose output depends a little on the batch (as padding does): one shared embedding per name
    encode = lambda t: torch.eye(3)[[len(x) % 3 for x in t]] + 1e-3 * len(t)  # noqa: E731
    clf = zero_shot_classifier(encode, ["ab", "abc", "ab"], ["{}"], classes_per_batch=2)
    assert torch.equal(clf[:, 0], clf[:, 2])
    images = clf.T[[0, 2]]  # one image of each "ab" class: exact tie between columns 0 and 2
    m = zero_shot_accuracy(images, torch.tensor([0, 2]), clf, ks=(1, 2, 3, 5))
    assert m["mean_per_class_recall"] == 50.0  # argmax picks column 0 for both (clip_benchmark's argmax)
    assert m["top2"] == 100.0 and m["top3"] == 100.0 and math.isnan(m["top5"])  # 3 classes: top-5 undefined


def test_unknown_tie_rule_rejected() -> None:
    with pytest.raises(ValueError, match="ties"):
        zero_shot_accuracy(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), ties="random")
