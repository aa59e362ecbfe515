"""2 real gloo ranks: ITC / accumulation / ITM give the single-process result on the same global batch."""
from __future__ import annotations

import pytest
import torch
from open_clip.loss import ClipLoss

from internvl_train.engine.collectives import all_gather_cat
from internvl_train.stages.contrastive_accumulation import contrastive_accumulation_step
from internvl_train.losses.itc import itc_loss
from internvl_train.losses.itm import itm_loss, sample_itm_negatives

from tiny_towers import average_grads_like_the_engine, encode, grads, make_data, make_model, run_on_ranks

pytestmark = pytest.mark.slow
GLOBAL, K = 8, 2  # global batch 8 = 2 ranks x 2 micro-batches x 2


def _single_process_reference(dropout: float, k: int, world: int) -> dict[str, torch.Tensor]:
    """Global-batch loss with each rank's dropout masks: rank r encodes its rows from seed 100 + r."""
    data = make_data(GLOBAL)
    model = make_model(dropout)
    images, texts, scale = [], [], None
    for r in range(world):
        torch.manual_seed(100 + r)
        rows = slice(r * GLOBAL // world, (r + 1) * GLOBAL // world)
        for part in range(k):
            mb = {key: v[rows].chunk(k)[part] for key, v in data.items()}
            image, text, scale = encode(model, mb)
            images.append(image)
            texts.append(text)
    itc_loss(torch.cat(images), torch.cat(texts), scale).backward()
    return grads(model)


def _assert_close(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-5), name


def _plain_itc_worker(rank: int, world: int, local_loss: bool) -> None:
    data = make_data(GLOBAL)
    rows = slice(rank * GLOBAL // world, (rank + 1) * GLOBAL // world)
    model = make_model()
    image, text, scale = encode(model, {k: v[rows] for k, v in data.items()})
    loss_fn = ClipLoss(local_loss=local_loss, gather_with_grad=True, rank=rank, world_size=world)
    if local_loss:  # our wrapper is exactly this configuration
        assert torch.allclose(loss_fn(image, text, scale), itc_loss(image, text, scale, rank, world))
    loss_fn(image, text, scale).backward()
    average_grads_like_the_engine(model)
    _assert_close(grads(model), _single_process_reference(0.0, 1, world))


def _accumulation_worker(rank: int, world: int, dropout: float) -> None:
    data = make_data(GLOBAL)
    rows = slice(rank * GLOBAL // world, (rank + 1) * GLOBAL // world)
    micro = [{key: v[rows].chunk(K)[part] for key, v in data.items()} for part in range(K)]
    model = make_model(dropout)
    torch.manual_seed(100 + rank)
    losses = contrastive_accumulation_step(model, micro, encode, lambda l, last: l.backward(), rank, world)
    average_grads_like_the_engine(model)
    _assert_close(grads(model), _single_process_reference(dropout, K, world))
    everyone = all_gather_cat(losses["itc"].reshape(1))
    assert torch.allclose(everyone[0], everyone[1])  # the logged loss is the global one on every rank


def _itm_worker(rank: int, world: int) -> None:
    torch.manual_seed(3)
    img, txt = torch.randn(GLOBAL, 4), torch.randn(GLOBAL, 4)
    head = torch.nn.Linear(8, 2)
    b = GLOBAL // world
    local_rows = torch.arange(rank * b, (rank + 1) * b)
    sim = img[local_rows] @ all_gather_cat(txt[local_rows]).T  # gathered == the global texts
    neg = sample_itm_negatives(sim, txt[local_rows] @ img.T, local_rows, generator=torch.Generator().manual_seed(9))
    out = itm_loss(lambda i, t: head(torch.cat([img[i], txt[t]], dim=1)), local_rows, neg)
    out.loss.backward()
    average_grads_like_the_engine(head)
    head_ref = torch.nn.Linear(8, 2)
    head_ref.load_state_dict(head.state_dict())
    full_rows = torch.arange(GLOBAL)
    ref_neg = sample_itm_negatives(img @ txt.T, txt @ img.T, full_rows, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ref_neg.text_for_image[local_rows], neg.text_for_image)
    ref = itm_loss(lambda i, t: head_ref(torch.cat([img[i], txt[t]], dim=1)), full_rows, ref_neg)
    ref.loss.backward()
    mean_loss = all_gather_cat(out.loss.detach().reshape(1)).mean()
    assert torch.allclose(mean_loss, ref.loss.detach(), atol=1e-6)
    _assert_close(grads(head), grads(head_ref))


def _all_checks(rank: int, world: int) -> None:
    # local_loss=True is our setting. False is checked too: with an AVERAGING engine and torch's SUM
    # reduce-scatter backward it is also exact (only its memory is quadratic), contrary to the folklore.
    for local_loss in (True, False):
        _plain_itc_worker(rank, world, local_loss)
    for dropout in (0.0, 0.3):
        _accumulation_worker(rank, world, dropout)
    _itm_worker(rank, world)


def test_itc_accumulation_itm_two_ranks_equal_one() -> None:
    """One spawn for all checks (process start-up dominates the cost on a 2-core machine)."""
    run_on_ranks(_all_checks, 2)
