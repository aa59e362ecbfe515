"""QLLaMA: cross-attention placement and the three stage-2 attention masks, on a tiny model."""
from __future__ import annotations

import pytest
import torch
from internvl_tiny import VOCAB, tiny_config

from internvl_train.models.internvl_c.modeling import InternVLC
from internvl_train.models.internvl_g.modeling import InternVLG
from internvl_train.models.qllama.masks import stage2_attention_mask

Q, T = 4, 6


@pytest.fixture(scope="module")
def model() -> InternVLG:
    torch.manual_seed(0)
    return InternVLG(tiny_config()).eval()


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    vision = torch.randn(2, 17, 32, generator=gen)
    ids = torch.randint(1, VOCAB, (2, T), generator=gen)
    mask = torch.ones(2, T, dtype=torch.long)
    return vision, ids, mask


def test_cross_attention_every_second_layer_named_as_official(model):
    assert model.text.cross_attention_layers() == [0, 2]
    names = {k for k in model.state_dict() if k.startswith("text.") and ".cross_attn." in k}
    expected = {f"text.model.layers.{i}.cross_attn.{m}.weight" for i in (0, 2)
                for m in ("q_proj", "k_proj", "v_proj", "o_proj", "norm1", "norm2")}
    assert names == expected
    assert model.text.model.layers[0].cross_attn.k_proj.in_features == 32  # vision width


@torch.no_grad()
@pytest.mark.parametrize("kind", ["itc", "itg"])
def test_queries_do_not_see_text_in_itc_and_itg(model, kind):
    vision, ids, mask = _inputs()
    other = ids.clone()
    other[:, 1:] = (other[:, 1:] + 7) % VOCAB
    a = model.qllama_hidden(vision, ids, mask, kind)
    b = model.qllama_hidden(vision, other, mask, kind)
    torch.testing.assert_close(a[:, :Q], b[:, :Q], atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:, :Q], model.query_outputs(vision), atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["itc", "itg"])
def test_text_is_causal(model, kind):
    vision, ids, mask = _inputs()
    later = ids.clone()
    later[:, 4:] = (later[:, 4:] + 3) % VOCAB
    a = model.qllama_hidden(vision, ids, mask, kind)
    b = model.qllama_hidden(vision, later, mask, kind)
    torch.testing.assert_close(a[:, : Q + 4], b[:, : Q + 4], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, Q + 4:], b[:, Q + 4:])


@torch.no_grad()
def test_itm_queries_see_text_and_itg_text_sees_image_but_itc_text_does_not(model):
    vision, ids, mask = _inputs()
    other_text = (ids + 5) % VOCAB
    other_vision = vision + 1.0
    itm = model.qllama_hidden(vision, ids, mask, "itm")
    assert not torch.allclose(itm[:, :Q], model.qllama_hidden(vision, other_text, mask, "itm")[:, :Q])
    itg, itg_v = (model.qllama_hidden(v, ids, mask, "itg") for v in (vision, other_vision))
    assert not torch.allclose(itg[:, Q:], itg_v[:, Q:])  # text reads the image through the queries
    itc, itc_v = (model.qllama_hidden(v, ids, mask, "itc") for v in (vision, other_vision))
    torch.testing.assert_close(itc[:, Q:], itc_v[:, Q:], atol=1e-6, rtol=0)
    assert not torch.allclose(itc[:, :Q], itc_v[:, :Q])  # cross-attention reaches the queries


@torch.no_grad()
def test_padding_is_invisible_and_text_embedding_matches_stage1(model):
    vision, ids, mask = _inputs()
    mask[1, 4:] = 0
    padded = ids.clone()
    padded[1, 4:] = 0
    other_pad = padded.clone()
    other_pad[1, 4:] = 9
    for kind in ("itm", "itc", "itg"):
        a = model.qllama_hidden(vision, padded, mask, kind)
        b = model.qllama_hidden(vision, other_pad, mask, kind)
        torch.testing.assert_close(a[1, : Q + 4], b[1, : Q + 4], atol=1e-6, rtol=0)
    model_c = InternVLC(tiny_config())
    model_c.load_state_dict({k: v for k, v in model.state_dict().items() if k in model_c.state_dict()})
    torch.testing.assert_close(model.encode_text(padded, mask), model_c.eval().encode_text(padded, mask))


def test_mask_shapes_and_values():
    mask = torch.tensor([[1, 1, 0]])
    itc = stage2_attention_mask("itc", mask, 2, torch.float32)[0, 0] == 0
    expected_itc = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0]])
    assert torch.equal(itc, expected_itc.bool())
    itg = stage2_attention_mask("itg", mask, 2, torch.float32)[0, 0] == 0
    expected_itg = expected_itc.clone()
    expected_itg[2:, :2] = 1
    assert torch.equal(itg, expected_itg.bool())
    itm = stage2_attention_mask("itm", mask, 2, torch.float32)[0, 0] == 0
    assert torch.equal(itm, torch.tensor([[1, 1, 1, 1, 0]] * 5).bool())
    with pytest.raises(ValueError, match="unknown QLLaMA pass"):
        stage2_attention_mask("itx", mask, 2, torch.float32)


@torch.no_grad()
def test_heads_shapes_and_ensemble(model):
    vision, ids, mask = _inputs()
    assert model.itm_logits(vision, ids, mask).shape == (2, 2)
    assert model.itg_logits(vision, ids, mask).shape == (2, T, VOCAB)
    pixels = torch.randn(2, 3, 32, 32)
    combined = model.encode_image(pixels)
    tokens = model.vision_tokens(pixels)
    c = torch.nn.functional.normalize(model.encode_image_c(tokens), dim=-1)
    g = torch.nn.functional.normalize(model.encode_image_g(tokens), dim=-1)
    torch.testing.assert_close(combined, c + g)  # the official encode_image: not normalised again
    assert not torch.allclose(combined.norm(dim=-1), torch.ones(2))


def test_stage2_trains_exactly_the_new_parts_and_logit_scale():
    import re

    from internvl_train.models.internvl_g.modeling import NEW_IN_G

    model = InternVLG(tiny_config())
    for module in model.stage2_frozen_modules():
        module.requires_grad_(False)
    for param in model.stage2_frozen_parameters():
        param.requires_grad_(False)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    expected = {k for k, _ in model.named_parameters() if any(re.fullmatch(p, k) for p in NEW_IN_G)}
    assert trainable == expected | {"logit_scale"}


def test_activation_checkpointing_keeps_query_gradients():
    vision, ids, mask = _inputs()
    grads = []
    for checkpointing in (False, True):
        cfg = tiny_config()
        cfg.text.gradient_checkpointing = checkpointing
        torch.manual_seed(0)
        model = InternVLG(cfg).train()
        assert model.text.model.layers[0].gradient_checkpointing == checkpointing
        model.itg_logits(vision, ids, mask).logsumexp(-1).mean().backward()
        grads.append(model.query_tokens.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


@torch.no_grad()
def test_every_task_runs_through_the_module_call(model):
    vision, ids, mask = _inputs()
    torch.testing.assert_close(model(vision, ids, mask, task="itm_logits"), model.itm_logits(vision, ids, mask))
    torch.testing.assert_close(model(ids, mask, task="encode_text"), model.encode_text(ids, mask))
    torch.testing.assert_close(model(vision, task="encode_image_g"), model.encode_image_g(vision))
    pixels = torch.randn(2, 3, 32, 32)
    assert set(model(pixels, ids, mask)) == {"image_embeds", "text_embeds", "logit_scale"}
    with pytest.raises(ValueError, match="unknown task"):
        model(vision, task="generate")
