"""The optional mlp+qllama bridge: stage-2 InternVL-G query outputs through mlp2, next to the ViT tokens."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from internvl_train.models.chat.modeling import build_chat_model, chat_forward, chat_parts
from tests.models.chat_spec import image_token_spec
from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.inference.export import export_native, export_official
from internvl_train.plan.standin_tokenizer import build_tiny_tokenizer
from internvl_train.models.weights import read_state_dict
from internvl_train.models.config import ModelConfig
from internvl_train.models.internvit.configuration import VisionTowerConfig
from internvl_train.models.internvl_c.configuration import TextTowerConfig
from internvl_train.models.qllama.configuration import QLLaMAConfig
from internvl_train.models.internvl_g.modeling import InternVLG
from tests.models.test_chat_model import IMAGE, tiny_tower, one_thread  # noqa: F401 (autouse)

QUERIES = 3


def tiny_internvl_g() -> InternVLG:
    cfg = ModelConfig(
        vision=VisionTowerConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, image_size=IMAGE,
                                 patch_size=14),
        text=TextTowerConfig(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=96, vocab_size=300,
                             max_position_embeddings=128),
        qllama=QLLaMAConfig(num_query_tokens=QUERIES), embed_dim=16, clip_projector_heads=4)
    torch.manual_seed(0)
    return InternVLG(cfg).eval()


def bridged_chat():
    cfg = ChatConfig(llm=ChatLLMConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                     force_image_size=IMAGE, bridge="mlp+qllama")
    model_g = tiny_internvl_g()
    build = build_chat_model(cfg, vision_tower=tiny_tower(), tokenizer=build_tiny_tokenizer(), model_g=model_g)
    return build, model_g


@torch.no_grad()
def test_query_tokens_follow_vit_tokens_in_each_tile() -> None:
    build, model_g = bridged_chat()
    model, tok = build.model.eval(), build.tokenizer
    spec = image_token_spec(model, tok)
    assert spec.num_image_token == 4 + QUERIES
    assert any(n.startswith("model.query_bridge.mlp2.") for n in build.new_parameters)
    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    features = model.get_image_features(pixel_values=pixels).pooler_output
    vit = model.model.vision_tower(pixel_values=pixels).last_hidden_state
    expected_queries = model.model.query_bridge.mlp2(model_g.query_outputs(vit))  # InternVL-G's own query path
    torch.testing.assert_close(features[:, 4:], expected_queries)
    assert not torch.allclose(features[:, :4].mean(), expected_queries.mean())
    ids = torch.tensor(tok(f"<s>{spec.image_block(2)}what?").input_ids)[None]
    labels = ids.clone()
    labels[ids == spec.context_token_id] = -100
    assert torch.isfinite(chat_forward(model, ids, pixels, labels=labels).loss)


def test_parts_cover_every_parameter_once() -> None:
    build, _ = bridged_chat()
    parts = chat_parts(build.model)
    ids = [id(p) for modules in parts.values() for m in modules for p in m.parameters()]
    assert len(ids) == len(set(ids)) == len({id(p) for p in build.model.parameters()})
    assert parts["qllama"] and len(parts["mlp"]) == 2


def test_bridged_model_exports_official_layout_only(tmp_path: Path) -> None:
    build, _ = bridged_chat()
    with pytest.raises(ValueError, match="bridge=mlp\\+qllama"):
        export_native(build.model, build.tokenizer, tmp_path / "native")
    export_official(build.model, build.tokenizer, tmp_path / "official")
    keys = set(read_state_dict(tmp_path / "official"))
    assert "query_bridge.queries.query_tokens" in keys and "query_bridge.mlp2.1.weight" in keys
    assert "mlp1.1.weight" in keys and "vision_model.encoder.layers.0.attn.qkv.weight" in keys


def test_vision_width_mismatch_is_rejected() -> None:
    model_g = tiny_internvl_g()
    cfg = ChatConfig(llm=ChatLLMConfig(), force_image_size=IMAGE, bridge="mlp+qllama")
    tower = tiny_tower()
    tower.config.hidden_size = 40  # pretend another ViT width
    with pytest.raises(ValueError, match="same ViT"):
        build_chat_model(cfg, vision_tower=tower, tokenizer=build_tiny_tokenizer(), model_g=model_g)
