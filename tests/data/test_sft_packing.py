"""Packed samples stay independent: positions, sample ids, loss weights, attention mask."""
import math

import pytest
import torch
import torch.nn.functional as F

from data_pipelines.sft.encode import EncodedSample
from data_pipelines.sft.packing import block_causal_mask, collate_rows, cu_seqlens_from_sample_ids
from internvl_train.losses.labels import IGNORE_INDEX
from internvl_train.losses.lm import sample_loss_weights


def fake_sample(n_tokens, n_supervised, tiles=()):
    ids = torch.arange(10, 10 + n_tokens)
    labels = torch.full((n_tokens,), IGNORE_INDEX)
    labels[n_tokens - n_supervised:] = ids[n_tokens - n_supervised:]
    return EncodedSample(ids, labels, torch.randn(sum(tiles), 3, 8, 8), list(tiles), truncated=False)


ROWS = [[fake_sample(7, 3, (2,)), fake_sample(5, 4), fake_sample(6, 1, (1, 3))], [fake_sample(9, 2)]]


def test_positions_sample_ids_and_padding():
    b = collate_rows(ROWS, pad_id=99, reduction="token", image_size=8)
    assert b["input_ids"].shape == (2, 18) and b["num_samples"] == 4
    assert b["position_ids"][0].tolist() == [*range(7), *range(5), *range(6)]
    assert b["sample_ids"][0].tolist() == [0] * 7 + [1] * 5 + [2] * 6
    assert b["sample_ids"][1].tolist() == [0] * 9 + [-1] * 9
    assert b["attention_mask"][1].tolist() == [1] * 9 + [0] * 9
    assert torch.all(b["input_ids"][1, 9:] == 99) and torch.all(b["labels"][1, 9:] == IGNORE_INDEX)
    assert b["pixel_values"].shape == (6, 3, 8, 8) and b["num_tiles"].tolist() == [2, 1, 3]
    assert torch.equal(b["pixel_values"][:2], ROWS[0][0].pixel_values)
    # every sample starts unsupervised: a packed neighbour's last token never predicts into it
    for row, start in ((0, 0), (0, 7), (0, 12), (1, 0)):
        assert b["labels"][row, start] == IGNORE_INDEX


@pytest.mark.parametrize("reduction, per_sample", [
    ("token", lambda n: float(n)), ("sample", lambda n: 1.0), ("square", lambda n: math.sqrt(n)),
])
def test_loss_weight_sums(reduction, per_sample):
    b = collate_rows(ROWS, pad_id=99, reduction=reduction, image_size=8)
    w, sid = b["loss_weights"], b["sample_ids"]
    assert torch.all(w[b["labels"] == IGNORE_INDEX] == 0)
    for row, samples in enumerate(ROWS):
        for k, s in enumerate(samples):
            assert w[row][sid[row] == k].sum().item() == pytest.approx(per_sample(s.num_supervised))
    assert sample_loss_weights(torch.full((4,), IGNORE_INDEX), reduction).sum() == 0


def test_block_mask_makes_packed_attention_equal_separate_attention():
    torch.manual_seed(0)
    b = collate_rows(ROWS, pad_id=99, reduction="token", image_size=8)
    mask = block_causal_mask(b["sample_ids"])
    q, k, v = (torch.randn(2, 2, 18, 4) for _ in range(3))
    packed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    start = 0
    for n in (7, 5, 6):
        sl = slice(start, start + n)
        alone = F.scaled_dot_product_attention(q[:1, :, sl], k[:1, :, sl], v[:1, :, sl], is_causal=True)
        assert torch.allclose(packed[:1, :, sl], alone, atol=1e-6)
        start += n
    assert not mask[0, 0, 7, :7].any() and mask[0, 0, 7, 7]  # sample 1 sees nothing of sample 0
    assert torch.isfinite(packed).all()  # padding rows are not empty softmaxes


def test_cu_seqlens():
    b = collate_rows(ROWS, pad_id=99, reduction="token", image_size=8)
    cu, max_len = cu_seqlens_from_sample_ids(b["sample_ids"])
    assert cu.tolist() == [0, 7, 12, 18, 27] and max_len == 9 and cu.dtype == torch.int32
