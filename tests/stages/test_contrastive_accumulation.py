"""GradCache-style accumulation: k micro-batches give the gradient of one batch of k*B (single process)."""
from __future__ import annotations

import pytest
import torch

from internvl_train.stages.contrastive_accumulation import contrastive_accumulation_step
from internvl_train.losses.itc import itc_loss

from tests.losses.tiny_towers import encode, grads, make_data, make_model


def split(batch: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    return [{key: v.chunk(k)[i] for key, v in batch.items()} for i in range(k)]


def reference_grads(dropout: float, data: dict, k: int, seed: int) -> tuple[dict, torch.Tensor]:
    """Full-batch loss with the same dropout masks: encode the micro-batches in order from the same seed."""
    model = make_model(dropout)
    torch.manual_seed(seed)
    parts = [encode(model, mb) for mb in split(data, k)]
    image = torch.cat([p[0] for p in parts])
    text = torch.cat([p[1] for p in parts])
    loss = itc_loss(image, text, parts[0][2])
    loss.backward()
    return grads(model), loss.detach()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("k", [1, 4])
def test_accumulated_gradient_equals_full_batch(dropout: float, k: int) -> None:
    data = make_data(16)
    expected, expected_loss = reference_grads(dropout, data, k, seed=7)
    model = make_model(dropout)
    calls = []

    def backward(loss: torch.Tensor, is_last: bool) -> None:
        calls.append(is_last)
        loss.backward()

    torch.manual_seed(7)
    losses = contrastive_accumulation_step(model, split(data, k), encode, backward)
    got = grads(model)
    assert calls == [False] * (k - 1) + [True]
    assert torch.allclose(losses["itc"], expected_loss, atol=1e-6)
    assert set(got) == set(expected)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-5), name


def test_dropout_replay_matters() -> None:
    """Without RNG replay the replayed masks differ: the test above would fail (guards the RNG restore)."""
    data = make_data(16)
    expected, _ = reference_grads(0.3, data, 4, seed=7)
    model = make_model(0.3)
    torch.manual_seed(7)
    encode_calls = {"n": 0}

    def encode_without_replay(m, b):  # advance the RNG between the passes: different masks
        encode_calls["n"] += 1
        if encode_calls["n"] > 4:
            torch.rand(1000)
        return encode(m, b)

    contrastive_accumulation_step(model, split(data, 4), encode_without_replay, lambda loss, last: loss.backward())
    got = grads(model)
    assert not all(torch.allclose(got[n], expected[n], atol=1e-6) for n in expected)


def test_deepspeed_style_divisor_is_compensated() -> None:
    data = make_data(12)
    expected, _ = reference_grads(0.0, data, 3, seed=0)
    model = make_model(0.0)
    gas = 3
    contrastive_accumulation_step(
        model, split(data, 3), encode, lambda loss, last: (loss / gas).backward(), backward_divisor=gas
    )
    got = grads(model)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=1e-5), name


def test_naive_per_microbatch_sum_is_not_the_full_batch_gradient() -> None:
    """Sanity: the problem the module solves is real (k separate ITC losses != one global loss)."""
    data = make_data(16)
    expected, _ = reference_grads(0.0, data, 4, seed=0)
    model = make_model(0.0)
    for mb in split(data, 4):
        (itc_loss(*encode(model, mb)) / 4).backward()
    got = grads(model)
    assert not torch.allclose(got["image.0.weight"], expected["image.0.weight"], atol=1e-4)


def test_extra_losses_are_averaged_and_backpropagated() -> None:
    data = make_data(8)
    model = make_model(0.0)

    def extra(batch, live, cache):
        return {"aux": live[0].pow(2).sum(dim=-1).mean() * 0 + batch["x"].mean() + live[1].sum() * 0.0}

    losses = contrastive_accumulation_step(model, split(data, 2), encode, lambda l, last: l.backward(), extra_losses=extra)
    assert torch.allclose(losses["aux"], data["x"].mean(), atol=1e-6)
    assert torch.allclose(losses["loss"], losses["itc"] + losses["aux"])


def test_empty_micro_batches_rejected() -> None:
    with pytest.raises(ValueError, match="micro_batches is empty"):
        contrastive_accumulation_step(make_model(), [], encode, lambda l, last: None)
