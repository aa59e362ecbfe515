"""Paper-size presets construct on the meta device with the published sizes; FLOP formulas; config checks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from internvl_train.errors import ConfigError
from internvl_train.models.config import ModelConfig, as_model_config
from internvl_train.models.flops import (decoder_train_flops_per_token, internvl_c_train_flops_per_sample,
                                         matmul_params, vision_train_flops)
from internvl_train.models.internvl_c.modeling import InternVLC
from internvl_train.models.internvl_g.modeling import InternVLG

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model"


def preset(name: str) -> ModelConfig:
    data = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert data.pop("defaults") == ["/schema/model@_here_", "_self_"]
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), data))


def _count(module: torch.nn.Module, prefix: str = "", contains: str = "") -> int:
    return sum(p.numel() for k, p in module.named_parameters() if k.startswith(prefix) and contains in k)


@pytest.mark.parametrize("path", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_composes_and_validates(path):
    preset(path.stem).validate_all()


# Published sizes: InternViT-6B 5.9B (224px, 48 layers), 5.5B (448px, 45 layers), InternViT-300M 0.3B,
# QLLaMA ~8B of which ~1B cross-attention, InternVL-14B ~14B. Tolerance 2%.
@pytest.mark.parametrize("name, vision", [("internvit_6b_224", 5.90e9), ("internvit_6b_448", 5.54e9),
                                          ("internvit_300m", 0.304e9)])
def test_vision_presets_have_the_published_size(name, vision):
    with torch.device("meta"):
        model = InternVLC(preset(name))
    assert _count(model, "vision.") == pytest.approx(vision, rel=0.02)


def test_internvl_14b_on_meta_has_published_sizes():
    with torch.device("meta"):
        model = InternVLG(preset("internvl_14b"))
    assert model.query_tokens.is_meta and model.query_tokens.shape == (1, 96, 4096)
    assert model.text.cross_attention_layers() == list(range(0, 32, 2))
    cross = _count(model, "text.", ".cross_attn.")
    qllama = _count(model, "text.") + model.query_tokens.numel()
    assert cross == pytest.approx(0.956e9, rel=0.02)
    assert qllama == pytest.approx(7.84e9, rel=0.02)
    assert _count(model) == pytest.approx(13.8e9, rel=0.02)


def test_internvit_6b_training_flops_match_the_paper():
    with torch.device("meta"):
        model = InternVLC(preset("internvl_c_6b"))
    vit = vision_train_flops(matmul_params(model.vision), 48, 3200, 257)
    assert vit == pytest.approx(9.2e12, rel=0.01)
    per_sample = internvl_c_train_flops_per_sample(model, text_len=80)
    text = 80 * decoder_train_flops_per_token(matmul_params(model.text.model), 32, 4096, 80)
    assert per_sample == pytest.approx(vit + text)


def test_config_errors_name_the_key():
    cfg = preset("tiny")
    cfg.vision.num_heads = 5
    with pytest.raises(ConfigError) as err:
        cfg.vision.validate()
    assert err.value.key == "hidden_size"
    cfg = preset("tiny")
    cfg.text.attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="4-D attention masks"):
        cfg.validate_qllama()
    cfg = preset("tiny")
    cfg.qllama.vision_width = 7
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert err.value.key == "qllama.vision_width"


def test_tiny_vocab_comes_from_the_tokenizer_and_is_saved():
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="vocab_size is null"):
        InternVLC(cfg)
    model = InternVLC(cfg, vocab_size=37)
    assert model.text.lm_head.out_features == 37 and model.config.text.vocab_size == 37
    assert as_model_config(OmegaConf.structured(model.config)).text.vocab_size == 37


def test_stage2_flops_count_the_frozen_vit_once_and_three_qllama_passes():
    from internvl_train.models.flops import internvl_g_train_flops_per_sample, vision_forward_flops

    with torch.device("meta"):
        model = InternVLG(preset("internvl_14b"))
    total = internvl_g_train_flops_per_sample(model, text_len=32)
    vit = vision_forward_flops(matmul_params(model.vision), 48, 3200, 257)
    qllama = 3 * 128 * decoder_train_flops_per_token(matmul_params(model.text.model), 32, 4096, 128)
    assert total == pytest.approx(vit + qllama) and qllama == pytest.approx(3 * 128 * 6 * 7.6e9, rel=0.05)
