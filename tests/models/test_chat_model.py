"""Chat model (stage 3): pixel-shuffle token order, special tokens, image-token injection, packed rows."""
from __future__ import annotations

import pytest
import torch
from transformers import InternVLVisionConfig, InternVLVisionModel
from transformers.models.internvl.modeling_internvl import InternVLModel

from internvl_train.models.chat.modeling import build_chat_model, chat_forward
from tests.models.chat_spec import image_token_spec
from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.models.chat.tokens import CHAT_SPECIAL_TOKENS
from internvl_train.plan.standin_tokenizer import build_tiny_tokenizer
from internvl_train.models.chat.pixel_shuffle import num_image_token, pixel_shuffle

IMAGE = 56  # 4x4 patches of 14 -> 2x2 = 4 LLM tokens per tile


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is ~30x faster than two under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_tower(seed: int = 0) -> InternVLVisionModel:
    torch.manual_seed(seed)
    return InternVLVisionModel(InternVLVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=IMAGE,
        patch_size=14, norm_type="rms_norm", use_qk_norm=True, use_mean_pooling=True)).eval()


def tiny_chat(ps_version: str = "v2", seed: int = 0, **llm):
    llm = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, **llm}
    cfg = ChatConfig(llm=ChatLLMConfig(**llm), force_image_size=IMAGE, ps_version=ps_version)
    build = build_chat_model(cfg, vision_tower=tiny_tower(seed), tokenizer=build_tiny_tokenizer())
    return build.model.eval(), build.tokenizer


def coded_grid(h: int, w: int, c: int) -> torch.Tensor:
    """x[0, r, col, :] = 1000*r + col repeated over channels (+ channel index / 10 to see the channel order)."""
    rows = torch.arange(h).view(h, 1, 1) * 1000.0
    cols = torch.arange(w).view(1, w, 1).float()
    return (rows + cols + torch.arange(c).view(1, 1, c) / 10).unsqueeze(0)


@pytest.mark.parametrize("ps_version", ["v1", "v2"])
def test_pixel_shuffle_token_order_on_coded_grid(ps_version: str) -> None:
    h, w, c = 4, 6, 3
    out = pixel_shuffle(coded_grid(h, w, c), 0.5, ps_version).reshape(-1, 4 * c)  # flattened as the LLM sees it
    order = [(i, j) for i in range(h // 2) for j in range(w // 2)]
    if ps_version == "v1":
        order = [(i, j) for j in range(w // 2) for i in range(h // 2)]  # column-major
    for token, (i, j) in zip(out, order):
        blocks = [(2 * i, 2 * j), (2 * i, 2 * j + 1), (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)]
        expected = torch.cat([1000.0 * r + col + torch.arange(c) / 10 for r, col in blocks])
        torch.testing.assert_close(token, expected.float())


def test_v2_is_transformers_pixel_shuffle() -> None:
    x = torch.randn(2, 8, 8, 5)
    reference = InternVLModel.pixel_shuffle(None, x, scale_factor=0.5)  # method uses no state
    torch.testing.assert_close(pixel_shuffle(x, 0.5, "v2"), reference)


def test_num_image_token() -> None:
    assert num_image_token(448, 14, 0.5) == 256
    assert num_image_token(224, 14, 0.5) == 64
    with pytest.raises(ValueError, match="not divisible"):
        num_image_token(14 * 15, 14, 0.5)


def test_special_tokens_added_in_official_order() -> None:
    model, tok = tiny_chat()
    base = len(build_tiny_tokenizer())
    ids = tok.convert_tokens_to_ids(list(CHAT_SPECIAL_TOKENS))
    assert ids == list(range(base, base + 9))
    assert CHAT_SPECIAL_TOKENS[:3] == ("<img>", "</img>", "<IMG_CONTEXT>")
    assert model.config.image_token_id == ids[2] and tok.context_image_token_id == ids[2]
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.lm_head.weight.shape[0]
    assert tok("a<IMG_CONTEXT>b").input_ids.count(ids[2]) == 1  # never split into bytes
    spec = image_token_spec(model, tok)
    assert spec.num_image_token == 4 and spec.tile_size == IMAGE and spec.image_block(2) == "<img>" + "<IMG_CONTEXT>" * 8 + "</img>"


def sample(tok, spec, text: str, tiles: int) -> torch.Tensor:
    return torch.tensor(tok(f"<s>{spec.image_block(tiles)}{text}").input_ids)


@torch.no_grad()
def test_image_features_replace_context_embeddings() -> None:
    model, tok = tiny_chat()
    spec = image_token_spec(model, tok)
    ids = sample(tok, spec, "what is it?", 2)[None]
    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    features = model.get_image_features(pixel_values=pixels).pooler_output.reshape(-1, 64)
    captured: dict[str, torch.Tensor] = {}

    def keep_embeds(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    chat_forward(model, ids, pixels)
    hook.remove()
    where = ids[0] == spec.context_token_id
    torch.testing.assert_close(captured["embeds"][0, where], features)
    torch.testing.assert_close(captured["embeds"][0, ~where], model.get_input_embeddings()(ids[0, ~where]))


@torch.no_grad()
def test_packed_row_equals_separate_rows() -> None:
    model, tok = tiny_chat()
    spec = image_token_spec(model, tok)
    a, b = sample(tok, spec, "first sample, one tile", 1), sample(tok, spec, "second: two tiles!", 2)
    pix_a, pix_b = torch.randn(1, 3, IMAGE, IMAGE), torch.randn(2, 3, IMAGE, IMAGE)
    alone_a = chat_forward(model, a[None], pix_a).logits[0]
    alone_b = chat_forward(model, b[None], pix_b).logits[0]
    pad = 3
    row = torch.cat([a, b, torch.full((pad,), tok.pad_token_id)])[None]
    positions = torch.cat([torch.arange(len(a)), torch.arange(len(b)), torch.arange(pad)])[None]
    packed = chat_forward(model, row, torch.cat([pix_a, pix_b]), position_ids=positions).logits[0]
    torch.testing.assert_close(packed[: len(a)], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[len(a): len(a) + len(b)], alone_b, atol=1e-5, rtol=1e-5)
    # Without per-sample positions the second sample would see the first: the check above can fail.
    leaky = chat_forward(model, row, torch.cat([pix_a, pix_b])).logits[0]
    assert not torch.allclose(leaky[len(a): len(a) + len(b)], alone_b, atol=1e-3)


def test_training_loss_backpropagates_into_projector() -> None:
    model, tok = tiny_chat()
    spec = image_token_spec(model, tok)
    ids = sample(tok, spec, "answer", 1)[None]
    labels = ids.clone()
    labels[ids == spec.context_token_id] = -100
    out = chat_forward(model.train(), ids, torch.randn(1, 3, IMAGE, IMAGE), labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0


def test_image_tokens_without_pixels_are_an_error() -> None:
    model, tok = tiny_chat()
    spec = image_token_spec(model, tok)
    with pytest.raises(ValueError, match="pixel_values"):
        chat_forward(model, sample(tok, spec, "x", 1)[None])
    with pytest.raises(ValueError, match="do not match"):  # transformers' own count check: 2 tiles, 1 block
        chat_forward(model, sample(tok, spec, "x", 1)[None], torch.randn(2, 3, IMAGE, IMAGE))
    text_only = torch.tensor(tok("<s>just text").input_ids)[None]
    assert chat_forward(model, text_only).logits.shape[1] == text_only.shape[1]


def flagged_batch(tok, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """[text-only sample, sample with a 2-tile image], right-padded to one length; and its attention mask."""
    rows = [torch.tensor(tok("<s>just some text, no picture").input_ids), sample(tok, spec, "what is it?", 2)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([r, torch.full((width - len(r),), tok.pad_token_id)]) for r in rows])
    mask = torch.stack([torch.arange(width) < len(r) for r in rows]).long()
    return ids, mask


@torch.no_grad()
def test_image_flags_drop_the_dummy_tile_of_a_text_only_sample() -> None:
    model, tok = tiny_chat()
    ids, mask = flagged_batch(tok, image_token_spec(model, tok))
    tiles, dummy = torch.randn(2, 3, IMAGE, IMAGE), torch.randn(1, 3, IMAGE, IMAGE)
    without = chat_forward(model, ids, tiles, attention_mask=mask).logits
    # official order: the text-only sample's dummy tile comes first, as its sample does
    for flags in (torch.tensor([0, 1, 1]), torch.tensor([[0], [1], [1]])):
        flagged = chat_forward(model, ids, torch.cat([dummy, tiles]), attention_mask=mask, image_flags=flags)
        torch.testing.assert_close(flagged.logits, without)


def test_image_flags_that_do_not_fit_the_context_tokens_are_an_error() -> None:
    model, tok = tiny_chat()
    ids, mask = flagged_batch(tok, image_token_spec(model, tok))
    pixels = torch.randn(3, 3, IMAGE, IMAGE)
    with pytest.raises(ValueError, match=r"image_flags keep 3 of 3 tiles = 12 image features .* hold 8 <IMG_CONTEXT>"):
        chat_forward(model, ids, pixels, attention_mask=mask, image_flags=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"image_flags has shape \(2,\), expected \[3\]"):
        chat_forward(model, ids, pixels, attention_mask=mask, image_flags=torch.tensor([0, 1]))


def test_bad_bridge_request_is_rejected() -> None:
    cfg = ChatConfig(llm=ChatLLMConfig(), force_image_size=IMAGE, bridge="mlp+qllama")
    with pytest.raises(ValueError, match="model_g"):
        build_chat_model(cfg, vision_tower=tiny_tower(), tokenizer=build_tiny_tokenizer())


@torch.no_grad()
def test_force_image_size_resizes_the_vit_once() -> None:
    tower = tiny_tower()  # 56 px: 4x4 patch grid
    old = tower.embeddings.position_embeddings.clone()
    cfg = ChatConfig(llm=ChatLLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                     force_image_size=112)
    build = build_chat_model(cfg, vision_tower=tower, tokenizer=build_tiny_tokenizer())
    pos = build.model.model.vision_tower.embeddings.position_embeddings
    assert pos.shape == (1, 1 + 8 * 8, 32) and torch.equal(pos[:, 0], old[:, 0])  # CLS slot unchanged
    assert build.model.config.vision_config.image_size == (112, 112)
    assert image_token_spec(build.model, build.tokenizer).num_image_token == 16
    out = build.model.get_image_features(pixel_values=torch.randn(1, 3, 112, 112)).pooler_output
    assert out.shape == (1, 16, 64)


def test_tiny_chat_learns_an_image_dependent_answer() -> None:
    """Same text, two images, two answers: only the image tokens can tell which answer is right."""
    torch.manual_seed(0)
    model, tok = tiny_chat()
    spec = image_token_spec(model.train(), tok)
    ids = torch.stack([sample(tok, spec, f"color? {answer}", 1) for answer in ("red", "tan")])
    answer = ids.shape[1] - 3  # first token where the rows differ
    assert ids[0, answer] != ids[1, answer] and torch.equal(ids[0, :answer], ids[1, :answer])
    labels = torch.full_like(ids, -100)
    labels[:, answer:] = ids[:, answer:]
    pixels = torch.stack([torch.full((3, IMAGE, IMAGE), 1.0), torch.full((3, IMAGE, IMAGE), -1.0)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = chat_forward(model, ids, pixels, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = chat_forward(model.eval(), ids, pixels).logits[:, answer - 1]
    assert torch.equal(logits.argmax(-1), ids[:, answer])  # a text-only model gets at most one of the two right
    assert loss.item() < 0.1


def test_llm_from_a_local_directory_keeps_its_weights_and_grows_by_the_new_tokens(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from internvl_train.models.chat.llm import make_llm_config

    base_tok = build_tiny_tokenizer()
    llm_config = make_llm_config(ChatLLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                                 len(base_tok), "sdpa")
    torch.manual_seed(3)
    llm = AutoModelForCausalLM.from_config(llm_config)
    llm.save_pretrained(tmp_path / "llm")
    base_tok.save_pretrained(tmp_path / "llm")
    cfg = ChatConfig(llm_path=str(tmp_path / "llm"), force_image_size=IMAGE)
    build = build_chat_model(cfg, vision_tower=tiny_tower())  # tokenizer read from llm_path
    old = llm.get_input_embeddings().weight
    new = build.model.get_input_embeddings().weight
    assert new.shape[0] == len(base_tok) + 9 == len(build.tokenizer)
    assert torch.equal(new[: len(base_tok)], old)
    torch.testing.assert_close(new[len(base_tok):], old.mean(0, keepdim=True).expand(9, -1))
    layer = "model.language_model.layers.1.mlp.down_proj.weight"
    assert torch.equal(build.model.state_dict()[layer], llm.state_dict()["model.layers.1.mlp.down_proj.weight"])
