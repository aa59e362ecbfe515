"""ITM negative sampling: never the positive or a duplicate, never NaN, rank-split invariant, and the loss."""
from __future__ import annotations

import pytest
import torch

from internvl_train.losses.itm import HARD_NEGATIVE_EPS, itm_loss, sample_itm_negatives


def sample(sim: torch.Tensor, seed: int = 0, **kw):
    rows = torch.arange(sim.shape[0])
    return sample_itm_negatives(sim, sim.T.contiguous(), rows, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize(
    "sim",
    [
        torch.eye(6) * 1e4,  # the positive dominates: must still be excluded
        torch.eye(6) * -1e4,
        torch.full((6, 6), 1e4),  # all equal and huge
        torch.zeros(6, 6),  # ties
        torch.randn(6, 6).bfloat16() * 1e3,
        torch.tensor([[float("inf"), 1, 2], [float("-inf"), 0, float("nan")], [0, float("inf"), 0]]),
    ],
)
def test_never_positive_never_nan(sim: torch.Tensor) -> None:
    for seed in range(30):
        neg = sample(sim, seed)
        n = sim.shape[0]
        assert neg.skipped == 0
        assert torch.equal(neg.image_rows, torch.arange(n)) and torch.equal(neg.text_rows, torch.arange(n))
        assert (neg.text_for_image != neg.image_rows).all() and (neg.image_for_text != neg.text_rows).all()
        assert ((neg.text_for_image >= 0) & (neg.text_for_image < n)).all()


def test_hard_negatives_follow_similarity() -> None:
    sim = torch.zeros(4, 4)
    sim[0, 3] = 20.0  # image 0 is most similar to text 3
    picks = [int(sample(sim, s).text_for_image[0]) for s in range(50)]
    assert picks.count(3) >= 48
    random_picks = {int(sample(sim, s, mode="random").text_for_image[0]) for s in range(50)}
    assert random_picks == {1, 2, 3}


@pytest.fixture
def one_thread():
    """Thousands of calls on 5x5 tensors: intra-op thread hand-offs would dominate (40x on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_hard_negative_draw_frequencies_match_softmax(one_thread) -> None:
    """Many draws (one generator seed each) land on each candidate as often as (softmax(sim) + eps),
    renormalised over the allowed candidates, says: a sampler returning the most similar candidate, or
    drawing from another distribution, fails. Fixed seeds: deterministic, the bound only sizes the margin."""
    gen = torch.Generator().manual_seed(11)
    sim_i2t, sim_t2i = torch.randn(5, 5, generator=gen), torch.randn(5, 5, generator=gen)
    sim_i2t.fill_diagonal_(3.0)  # the positive is the most similar: it must not take any probability
    image_ids = torch.tensor([0, 1, 2, 3, 3])  # rows 3 and 4 show the same image: never each other's negative
    rows = torch.arange(5)
    allowed = (rows[:, None] != rows[None, :]) & (image_ids[:, None] != image_ids[None, :])
    draws = 4000
    counts = torch.zeros(2, 5, 5)
    for seed in range(draws):
        neg = sample_itm_negatives(sim_i2t, sim_t2i, rows, image_ids=image_ids,
                                   generator=torch.Generator().manual_seed(seed))
        counts[0, neg.image_rows, neg.text_for_image] += 1
        counts[1, neg.text_rows, neg.image_for_text] += 1
    for direction, sim in enumerate((sim_i2t, sim_t2i)):
        weights = (sim.exp() * allowed / (sim.exp() * allowed).sum(1, keepdim=True) + HARD_NEGATIVE_EPS) * allowed
        expected = weights / weights.sum(1, keepdim=True)
        freq = counts[direction] / draws
        # 5 binomial standard deviations per cell (+ a floor for p ~ 0): a chance failure is ~1e-6 per cell.
        bound = 5 * (expected * (1 - expected) / draws).sqrt() + 1e-3
        assert ((freq - expected).abs() <= bound).all(), (direction, freq, expected)
        assert (freq[~allowed] == 0).all()


def test_duplicate_ids_are_excluded_and_lonely_rows_skipped() -> None:
    sim = torch.randn(4, 4)
    image_ids = torch.tensor([7, 7, 8, 9])  # rows 0 and 1 show the same image
    text_ids = torch.tensor([0, 1, 2, 2])  # texts 2 and 3 are the same caption
    for s in range(30):
        neg = sample(sim, s, image_ids=image_ids, text_ids=text_ids)
        assert neg.skipped == 0
        for row, t in zip(neg.image_rows.tolist(), neg.text_for_image.tolist()):
            assert image_ids[t] != image_ids[row] and text_ids[t] != text_ids[row]
    everything_same = sample(sim, image_ids=torch.zeros(4, dtype=torch.long))
    assert everything_same.skipped == 8 and everything_same.text_for_image.numel() == 0


def test_global_batch_of_one_is_skipped_not_nan() -> None:
    neg = sample(torch.tensor([[3.0]]))
    assert neg.skipped == 2 and neg.text_for_image.numel() == 0
    out = itm_loss(lambda i, t: torch.zeros(i.numel(), 2, requires_grad=True), torch.tensor([0]), neg)
    assert out.loss.item() == 0.0 and out.n_negatives == 0 and out.loss.requires_grad


def test_rank_split_invariance() -> None:
    """Rank 1 of 2 (rows 2, 3 of a global batch of 4) draws what one process draws for those rows."""
    sim_i2t, sim_t2i = torch.randn(4, 4), torch.randn(4, 4)
    full = sample_itm_negatives(sim_i2t, sim_t2i, torch.arange(4), generator=torch.Generator().manual_seed(5))
    half = sample_itm_negatives(
        sim_i2t[2:], sim_t2i[2:], torch.tensor([2, 3]), generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(half.text_for_image, full.text_for_image[2:])
    assert torch.equal(half.image_for_text, full.image_for_text[2:])


def test_itm_loss_pairs_and_labels() -> None:
    neg = sample(torch.randn(3, 3), 1)
    seen = {}

    def itm_logits(image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        seen["pairs"] = list(zip(image_index.tolist(), text_index.tolist()))
        match = (image_index == text_index).float()
        return torch.stack([-10 * match + 5 * (1 - match), 10 * match - 5 * (1 - match)], dim=1)

    out = itm_loss(itm_logits, torch.arange(3), neg)
    assert seen["pairs"][:3] == [(0, 0), (1, 1), (2, 2)]
    assert len(seen["pairs"]) == 9 and out.n_negatives == 6
    assert out.accuracy.item() == 1.0 and out.loss.item() < 1e-3


def test_bad_mode_and_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        sample(torch.zeros(2, 2), mode="hardest")
    with pytest.raises(ValueError, match="local_rows"):
        sample_itm_negatives(torch.zeros(2, 3), torch.zeros(2, 3), torch.arange(3))
