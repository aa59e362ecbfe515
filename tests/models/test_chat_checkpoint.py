"""Chat checkpoints: official layout -> our model -> official export (identical tensors), native export loaded
by plain transformers with equal logits, v1 checkpoints keep the official v1 token order."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
                          InternVLForConditionalGeneration)

from internvl_train.models.chat.modeling import InternVLChatModel, chat_forward
from internvl_train.models.chat.official import load_chat_model, load_official_chat, native_chat_to_official
from internvl_train.models.weights import read_state_dict
from internvl_train.inference.export import export_native, export_official
from tests.models.test_chat_model import IMAGE, tiny_chat, one_thread  # noqa: F401 (autouse)

OFFICIAL_VISION_KEYS = {  # layer 0 of a 6B-style InternViT in the official HF remote-code naming
    "vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding", "vision_model.encoder.layers.0.attn.qkv.weight",
    "vision_model.encoder.layers.0.attn.q_norm.weight", "vision_model.encoder.layers.0.attn.proj.weight",
    "vision_model.encoder.layers.0.ls1", "vision_model.encoder.layers.0.norm1.weight",
    "vision_model.encoder.layers.0.mlp.fc1.weight", "mlp1.0.weight", "mlp1.1.weight", "mlp1.3.weight",
    "language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
}


def write_official_checkpoint(root: Path, ps_version: str | None) -> dict[str, torch.Tensor]:
    """An official-layout directory: random tensors in official names, config.json as the official class."""
    model, tok = tiny_chat()
    state, unknown = native_chat_to_official(model.state_dict())
    assert not unknown and OFFICIAL_VISION_KEYS <= set(state)
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in state.items()}  # nothing equals an initialiser
    root.mkdir(parents=True)
    save_file(state, str(root / "model.safetensors"))
    vc = model.config.vision_config
    config = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "downsample_ratio": 0.5,
              "select_layer": -1, "template": "internvl2_5", "force_image_size": IMAGE,
              "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "intermediate_size": 64, "image_size": IMAGE, "patch_size": 14,
                                "norm_type": "rms_norm", "qk_normalization": True, "qkv_bias": False,
                                "layer_norm_eps": vc.layer_norm_eps},
              "llm_config": {**model.config.text_config.to_dict(), "attn_implementation": "flash_attention_2",
                             "_name_or_path": "/mnt/petrelfs/some/llm", "torch_dtype": "bfloat16"}}
    if ps_version is not None:
        config["ps_version"] = ps_version
    (root / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(root)
    return state


def test_official_roundtrip_is_identical(tmp_path: Path) -> None:
    original = write_official_checkpoint(tmp_path / "official", "v2")
    tok = AutoTokenizer.from_pretrained(tmp_path / "official")
    model, report = load_official_chat(tmp_path / "official")  # <IMG_CONTEXT> id read from its tokenizer
    assert not report.missing and not report.unexpected
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert model.config.text_config._attn_implementation == "sdpa"  # not the saved flash_attention_2
    torch.testing.assert_close(model.model.multi_modal_projector.linear_1.weight, original["mlp1.1.weight"])
    export_official(model, tok, tmp_path / "export")
    exported = read_state_dict(tmp_path / "export")
    assert set(exported) == set(original)
    for key, value in original.items():
        assert torch.equal(exported[key], value), key
    assert json.loads((tmp_path / "export" / "config.json").read_text())["ps_version"] == "v2"


@pytest.mark.parametrize("official_key, native_key", [
    ("mlp1.1.weight", "model.multi_modal_projector.linear_1.weight"),
    ("vision_model.encoder.layers.1.ls1", "model.vision_tower.encoder.layer.1.lambda_1"),
])
def test_official_checkpoint_lacking_a_tensor_names_it_missing(tmp_path: Path, official_key: str,
                                                              native_key: str) -> None:
    state = write_official_checkpoint(tmp_path / "official", "v2")
    del state[official_key]
    save_file(state, str(tmp_path / "official" / "model.safetensors"))
    # the missing-key report, not the later "left uninitialised" (meta tensor) check, must speak
    with pytest.raises(ValueError, match=rf"missing keys \['{re.escape(native_key)}'\] \(1\).*complete InternVL-Chat"):
        load_official_chat(tmp_path / "official")


def test_vision_layer_norm_eps_reaches_the_qk_norm_of_an_official_chat(tmp_path: Path) -> None:
    write_official_checkpoint(tmp_path / "official", "v2")
    config_file = tmp_path / "official" / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["layer_norm_eps"] = 1e-2
    config_file.write_text(json.dumps(config))
    model, _ = load_official_chat(tmp_path / "official")
    for layer in model.model.vision_tower.encoder.layer:
        assert layer.attention.q_norm.variance_epsilon == layer.attention.k_norm.variance_epsilon == 1e-2
    assert not model.is_native_transformers  # plain transformers would run its q/k norm at 1e-6


def test_missing_ps_version_means_v1_and_keeps_official_v1_order(tmp_path: Path) -> None:
    write_official_checkpoint(tmp_path / "official", ps_version=None)
    model, _ = load_official_chat(tmp_path / "official")
    assert model.ps_version == "v1"
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = model.get_image_features(pixel_values=pixels).pooler_output
        # The official extract_feature, step by step: drop CLS, square grid, v1 shuffle (no final permute), mlp1.
        vit = model.model.vision_tower(pixel_values=pixels).last_hidden_state[:, 1:]
        n, t, c = vit.shape
        side = int(t ** 0.5)
        x = vit.reshape(n, side, side, c).view(n, side, side // 2, c * 2).permute(0, 2, 1, 3)
        x = x.reshape(n, side // 2, side // 2, c * 4).reshape(n, -1, c * 4)
        reference = model.model.multi_modal_projector(x)
    torch.testing.assert_close(ours, reference)
    with pytest.raises(ValueError, match="ps_version=v1"):
        export_native(model, None, tmp_path / "native")


def test_native_export_loads_with_plain_transformers(tmp_path: Path) -> None:
    model, tok = tiny_chat()
    export_native(model, tok, tmp_path / "native")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "native").eval()
    assert type(loaded) is InternVLForConditionalGeneration
    processor = AutoProcessor.from_pretrained(tmp_path / "native")
    assert len(processor.tokenizer) == len(tok) + 1 == loaded.config.text_config.vocab_size  # + <video>
    assert processor.tokenizer.convert_tokens_to_ids("<video>") == len(tok)  # after the InternVL tokens
    assert processor.tokenizer.context_image_token_id == model.config.image_token_id
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 120, 3), dtype=np.uint8))
    inputs = processor(images=[image], text=["<s><IMG_CONTEXT>\ndescribe"], return_tensors="pt")
    tiles = inputs["pixel_values"].shape[0]
    assert tiles == 3  # 2 tiles side by side + thumbnail
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 4 * tiles
    with torch.no_grad():
        theirs = loaded(**inputs).logits[..., : len(tok)]  # the padded <video> row is new
        ours = chat_forward(model, inputs["input_ids"], inputs["pixel_values"]).logits
        reloaded = load_chat_model(tmp_path / "native")[0]
        again = chat_forward(reloaded, inputs["input_ids"], inputs["pixel_values"]).logits[..., : len(tok)]
    torch.testing.assert_close(theirs, ours)
    torch.testing.assert_close(again, ours)
    assert isinstance(reloaded, InternVLChatModel) and reloaded.ps_version == "v2"


def test_native_export_of_tied_qwen2_llm(tmp_path: Path) -> None:
    model, tok = tiny_chat(model_type="qwen2", num_kv_heads=2, tie_word_embeddings=True)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    export_native(model, tok, tmp_path / "native")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "native").eval()
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids = torch.tensor(tok(f"<s>{'<img>' + '<IMG_CONTEXT>' * 4 + '</img>'}hi").input_ids)[None]
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ours = chat_forward(model, ids, pixels).logits
        theirs = loaded(input_ids=ids, pixel_values=pixels).logits[..., : len(tok)]
    torch.testing.assert_close(theirs, ours)


def test_official_export_of_tied_qwen2_loads_back(tmp_path: Path) -> None:
    model, tok = tiny_chat(model_type="qwen2", num_kv_heads=2, tie_word_embeddings=True)
    export_official(model, tok, tmp_path / "official")
    loaded, report = load_chat_model(tmp_path / "official", model.config.image_token_id)
    assert not report.missing and not report.unexpected and loaded.ps_version == "v2"
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    ids = torch.tensor(tok("<s><img>" + "<IMG_CONTEXT>" * 4 + "</img>hi").input_ids)[None]
    pixels = torch.randn(1, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(chat_forward(loaded, ids, pixels).logits, chat_forward(model, ids, pixels).logits)
