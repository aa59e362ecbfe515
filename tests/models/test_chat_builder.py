"""Stage-3 model from the run config: ViT (+ QLLaMA) from a stage export, an official InternViT, or a chat
checkpoint to continue from."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from internvl_train.models import weights
from internvl_train.models.internvit import official as official_vit
from internvl_train.models.chat.modeling import chat_forward
from internvl_train.models.chat.build import build_chat_from_config
from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.inference.export import export_native
from internvl_train.plan.standin_tokenizer import build_tiny_tokenizer
from internvl_train.models.config import ModelConfig
from tests.models.test_chat_bridge import tiny_internvl_g
from tests.models.test_chat_model import IMAGE, one_thread  # noqa: F401 (autouse)


def chat_model_config(g: ModelConfig, bridge: str = "mlp") -> ModelConfig:
    chat = ChatConfig(llm=ChatLLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                      force_image_size=IMAGE, bridge=bridge)
    return dataclasses.replace(g, chat=chat)


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_vit_and_qllama_come_from_the_stage2_export(tmp_path: Path) -> None:
    model_g = tiny_internvl_g()
    weights.save_pretrained(model_g, tmp_path / "stage2")
    cfg = chat_model_config(model_g.config, bridge="mlp+qllama")
    build = build_chat_from_config(cfg, init_from=str(tmp_path / "stage2"), tokenizer=build_tiny_tokenizer())
    assert_same_tensors(build.model.model.vision_tower, model_g.vision)
    torch.testing.assert_close(build.model.model.query_bridge.queries.query_tokens, model_g.query_tokens)
    with pytest.raises(ValueError, match="stage-2"):
        build_chat_from_config(cfg, tokenizer=build_tiny_tokenizer())  # no QLLaMA without the export


def test_vit_from_an_official_internvit_checkpoint(tmp_path: Path) -> None:
    source = tiny_internvl_g()
    state = official_vit.ours_to_official(source.vision.state_dict(), layout="hf")
    save_file({"vision_model." + k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vit.safetensors"))
    cfg = chat_model_config(source.config)
    cfg.vision.pretrained = str(tmp_path / "vit.safetensors")
    build = build_chat_from_config(cfg, tokenizer=build_tiny_tokenizer())
    assert_same_tensors(build.model.model.vision_tower, source.vision)


def test_continue_from_a_native_chat_export(tmp_path: Path) -> None:
    cfg = chat_model_config(tiny_internvl_g().config)
    first = build_chat_from_config(cfg, tokenizer=build_tiny_tokenizer())
    export_native(first.model, first.tokenizer, tmp_path / "chat")
    again = build_chat_from_config(cfg, init_from=str(tmp_path / "chat"))
    assert again.new_parameters == []
    ids = torch.tensor(again.tokenizer("<s><img>" + "<IMG_CONTEXT>" * 4 + "</img>hi").input_ids)[None]
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = chat_forward(first.model.eval(), ids, pixels).logits
        theirs = chat_forward(again.model.eval(), ids, pixels).logits[..., : ours.shape[-1]]
    torch.testing.assert_close(theirs, ours)


def test_llm_from_the_stage2_text_tower_without_its_cross_attention(tmp_path: Path) -> None:
    model_g = tiny_internvl_g().eval()
    weights.save_pretrained(model_g, tmp_path / "stage2")
    cfg = chat_model_config(model_g.config)
    cfg.chat.llm_from_text_tower = True
    with pytest.raises(ValueError, match="text_tower_from"):
        build_chat_from_config(cfg, tokenizer=build_tiny_tokenizer())
    build = build_chat_from_config(cfg, tokenizer=build_tiny_tokenizer(), text_tower_from=str(tmp_path / "stage2"))
    model = build.model.eval()
    assert model.config.text_config.max_position_embeddings == cfg.chat.llm.max_position_embeddings
    assert not any("cross_attn" in k for k in model.state_dict())
    vocab = model_g.text.config.vocab_size
    ids = torch.randint(3, vocab, (2, 6))
    with torch.no_grad():  # the chat LLM is QLLaMA's text-only path: same logits over the old vocabulary
        ours = model.lm_head(model.model.language_model(input_ids=ids).last_hidden_state)[..., :vocab]
        expected = model_g.text.lm_head(model_g.text_hidden(ids, torch.ones_like(ids)))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
