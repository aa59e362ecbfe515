"""Chat presets: they parse into ModelConfig, and the paper sizes build on the meta device with the parameter
counts their configs imply (LLaMA-13B: 13,015,864,320; Qwen2.5-0.5B: 494,032,768)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from transformers import InternVLVisionModel

from internvl_train.errors import ConfigError
from internvl_train.models.chat.modeling import build_chat_model
from tests.models.chat_spec import image_token_spec
from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.plan.standin_tokenizer import build_tiny_tokenizer
from internvl_train.models.config import ModelConfig
from internvl_train.models.internvit.modeling import build_vision_tower, internvl_vision_config
from tests.models.test_chat_model import one_thread  # noqa: F401 (autouse)

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


def load_preset(name: str) -> ModelConfig:
    data = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert data.pop("defaults") == ["/schema/model@_here_", "_self_"]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), data))  # typed, no unknown keys
    cfg.validate_all()
    return cfg


def llm_params(llm, vocab: int) -> int:
    d, heads, kv = llm.hidden_size, llm.num_heads, llm.num_kv_heads or llm.num_heads
    head_dim = d // heads
    attn = d * head_dim * (heads + 2 * kv) + heads * head_dim * d
    attn_bias = head_dim * (heads + 2 * kv) if llm.model_type == "qwen2" else 0  # Qwen2 has q/k/v biases
    layer = attn + attn_bias + 3 * d * llm.intermediate_size + 2 * d
    return vocab * d * (1 if llm.tie_word_embeddings else 2) + llm.num_layers * layer + d


def vit_params(v) -> int:
    c, i, patches = v.hidden_size, v.intermediate_size, (v.image_size // v.patch_size) ** 2
    norm = c * (2 if v.norm_type == "layer_norm" else 1)
    attn = 3 * c * c + (3 * c if v.qkv_bias else 0) + (2 * c if v.qk_normalization else 0) + c * c + c
    layer = attn + 2 * c + 2 * norm + 2 * c * i + i + c
    return c * 3 * v.patch_size ** 2 + c + c + (patches + 1) * c + v.num_layers * layer


@pytest.mark.parametrize("name, llm_total", [("chat_internvit6b_vicuna13b", 13_015_864_320),
                                             ("chat_internvit300m_qwen2", 494_032_768)])
def test_paper_size_preset_builds_on_meta(name: str, llm_total: int) -> None:
    cfg = load_preset(name)
    with torch.device("meta"):  # the tower without drop-path hooks (nothing to count there)
        tower = InternVLVisionModel(internvl_vision_config(cfg.vision))
        build = build_chat_model(cfg.chat, vision_tower=tower, tokenizer=build_tiny_tokenizer())
    model = build.model
    assert all(p.is_meta for p in model.parameters())
    llm = cfg.chat.llm
    assert llm_params(llm, llm.vocab_size) == llm_total
    c4, d = cfg.vision.hidden_size * 4, llm.hidden_size
    projector = 2 * c4 + c4 * d + d + d * d + d
    counted = sum(p.numel() for p in model.parameters())  # tied embeddings count once
    assert counted == vit_params(cfg.vision) + projector + llm_total
    assert image_token_spec(model, build.tokenizer).num_image_token == 256


def test_tiny_preset_builds_and_counts_tokens() -> None:
    cfg = load_preset("chat_tiny")
    build = build_chat_model(cfg.chat, vision_tower=build_vision_tower(cfg.vision), tokenizer=build_tiny_tokenizer())
    assert image_token_spec(build.model, build.tokenizer).num_image_token == (64 // 8) ** 2 // 4
    assert build.model.config.text_config.vocab_size == len(build.tokenizer)


@pytest.mark.parametrize("field, value, key", [
    ("ps_version", "v3", "ps_version"), ("bridge", "qformer", "bridge"),
    ("downsample_ratio", 0.3, "downsample_ratio"), ("max_dynamic_patch", 0, "max_dynamic_patch"),
    ("min_dynamic_patch", 5, "max_dynamic_patch"),  # chat_tiny's max is 4: min > max names max
])
def test_bad_chat_values_are_rejected_with_their_key(field: str, value, key: str) -> None:
    cfg = load_preset("chat_tiny")
    setattr(cfg.chat, field, value)
    with pytest.raises(ConfigError) as err:
        cfg.chat.validate()
    assert err.value.key == key


def test_chat_needs_an_llm() -> None:
    with pytest.raises(ConfigError, match="llm_path"):
        ChatConfig().validate()
    with pytest.raises(ConfigError) as err:
        ChatConfig(llm=ChatLLMConfig(hidden_size=60, num_heads=8)).validate()
    assert err.value.key == "llm.hidden_size"  # relative to ChatConfig
