"""ITG labels and loss, weighted stage-3 LM loss (packed == unpacked), combined loss dict."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internvl_train.losses.combine import combine_losses
from internvl_train.losses.itg import itg_labels, itg_loss
from internvl_train.losses.labels import IGNORE_INDEX as I
from internvl_train.losses.lm import lm_loss, token_loss_weights


def test_itg_labels_mask_prefix_except_last_and_padding() -> None:
    ids = torch.tensor([[1, 11, 12, 13, 21, 22, 2, 0], [0, 0, 1, 11, 12, 13, 21, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 1]])  # right and left padding
    labels = itg_labels(ids, 4, mask)  # prefix = BOS + 3 tokens
    assert labels.tolist() == [[I, I, I, 13, 21, 22, 2, I], [I, I, I, I, I, 13, 21, 2]]
    per_sample = itg_labels(ids[:1], torch.tensor([2]), mask[:1])
    assert per_sample.tolist() == [[I, 11, 12, 13, 21, 22, 2, I]]


def test_itg_loss_is_shifted_ce_and_rejects_empty() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 9)
    labels = torch.tensor([[I, 3, I, 5]])
    expected = (F.cross_entropy(logits[0, 0:1], torch.tensor([3])) + F.cross_entropy(logits[0, 2:3], torch.tensor([5]))) / 2
    assert torch.allclose(itg_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="no supervised token"):
        itg_loss(logits, torch.full((1, 4), I))
    with pytest.raises(ValueError, match="same"):
        itg_labels(torch.zeros(2, 3, dtype=torch.long), 1, torch.ones(2, 4))


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_weighted_lm_loss_packed_equals_unpacked(reduction: str) -> None:
    torch.manual_seed(0)
    vocab = 11
    # two samples; the second's first token is supervised on purpose (packing must not make it a target)
    a_lab = torch.tensor([I, I, 5, 6, 7])
    b_lab = torch.tensor([1, 8, 9])
    a_log, b_log = torch.randn(5, vocab), torch.randn(3, vocab)
    # unpacked: two rows, right padded
    labels_u = torch.stack([a_lab, torch.cat([b_lab, torch.full((2,), I)])])
    logits_u = torch.stack([a_log, torch.cat([b_log, torch.randn(2, vocab)])])
    pos_u = torch.stack([torch.arange(5), torch.tensor([0, 1, 2, 3, 4])])
    w_u = token_loss_weights(labels_u, reduction, pos_u)
    # packed: one row
    labels_p = torch.cat([a_lab, b_lab])[None]
    logits_p = torch.cat([a_log, b_log])[None]
    pos_p = torch.cat([torch.arange(5), torch.arange(3)])[None]
    w_p = token_loss_weights(labels_p, reduction, pos_p)
    unpacked = lm_loss(logits_u, labels_u, w_u, pos_u)
    packed = lm_loss(logits_p, labels_p, w_p, pos_p)
    assert torch.allclose(packed, unpacked, atol=1e-6)
    # and the value is what the reduction means: a has 3 targets, b has 2
    ce_a = F.cross_entropy(a_log[:-1], a_lab[1:], ignore_index=I, reduction="none")[1:]
    ce_b = F.cross_entropy(b_log[:-1], b_lab[1:], reduction="none")
    if reduction == "token":
        expected = torch.cat([ce_a, ce_b]).mean()
    elif reduction == "sample":
        expected = (ce_a.mean() + ce_b.mean()) / 2
    else:
        expected = (ce_a.sum() / 3**0.5 + ce_b.sum() / 2**0.5) / (3 / 3**0.5 + 2 / 2**0.5)
    assert torch.allclose(packed, expected, atol=1e-6)


def test_packing_without_position_ids_would_leak() -> None:
    """The boundary target exists only without position_ids: the guard is what makes packing invariant."""
    labels = torch.tensor([[I, 5, 6, 1, 8]])
    logits = torch.randn(1, 5, 10)
    pos = torch.tensor([[0, 1, 2, 0, 1]])
    assert not torch.allclose(lm_loss(logits, labels), lm_loss(logits, labels, position_ids=pos))


def test_lm_loss_rejects_nothing_supervised() -> None:
    with pytest.raises(ValueError, match="no supervised token"):
        lm_loss(torch.randn(1, 3, 5), torch.full((1, 3), I))
    with pytest.raises(ValueError, match="reduction"):
        token_loss_weights(torch.zeros(1, 3, dtype=torch.long), "mean")


def test_combine_losses() -> None:
    losses = {"itc": torch.tensor(1.0), "itm": torch.tensor(2.0), "itg": torch.tensor(3.0)}
    assert combine_losses(losses)["loss"].item() == 6.0
    assert combine_losses(losses, {"itm": 0.5})["loss"].item() == 5.0
    with pytest.raises(KeyError, match="unknown losses"):
        combine_losses(losses, {"itx": 1.0})
    with pytest.raises(KeyError, match="reserved"):
        combine_losses({"loss": torch.tensor(1.0)})


def test_logit_scale_clamps() -> None:
    import math

    from internvl_train.losses.itc import clamp_logit_scale_, scaled_logit_scale

    assert scaled_logit_scale(torch.tensor(9.0)).item() == pytest.approx(100.0)
    assert scaled_logit_scale(torch.tensor(-1.0)).item() == pytest.approx(1.0)
    p = torch.nn.Parameter(torch.tensor([9.0, -2.0, 1.0]))
    clamp_logit_scale_(p)
    assert torch.allclose(p.data, torch.tensor([math.log(100.0), 0.0, 1.0]))
