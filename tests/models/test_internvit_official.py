"""Our InternViT (transformers InternVLVisionModel + adapter) equals the official InternViT math, and the
official layouts round-trip exactly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from internvl_tiny import tiny_config
from official_fixtures import official_internvit

from internvl_train.models.internvit import official as official_vit
from internvl_train.models.internvl_c.build import load_vision_weights
from internvl_train.models.weights import CheckpointMismatchError
from internvl_train.models.internvit.configuration import VisionTowerConfig
from internvl_train.models.internvl_c.modeling import InternVLC


def _norm(x: torch.Tensor, sd: dict, prefix: str, layer_norm: bool) -> torch.Tensor:
    if layer_norm:
        return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps=1e-6)
    return sd[prefix + ".weight"] * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def reference_internvit(sd: dict, pixels: torch.Tensor, cfg: VisionTowerConfig) -> torch.Tensor:
    """The official InternViT forward written from its definition: fused qkv, q/k norm over the full width
    (before the head split), pre-norm blocks with ls1/ls2, erf GELU, CLS first, no final norm."""
    ln, heads = cfg.norm_type == "layer_norm", cfg.num_heads
    x = F.conv2d(pixels, sd["embeddings.patch_embedding.weight"], sd["embeddings.patch_embedding.bias"],
                 stride=cfg.patch_size).flatten(2).transpose(1, 2)
    b, c = x.shape[0], x.shape[-1]
    x = torch.cat([sd["embeddings.class_embedding"].expand(b, -1, -1), x], 1) + sd["embeddings.position_embedding"]
    n = x.shape[1]
    for i in range(cfg.num_layers):
        p = f"encoder.layers.{i}."
        h = _norm(x, sd, p + "norm1", ln)
        q, k, v = F.linear(h, sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias")).chunk(3, dim=-1)
        if cfg.qk_normalization:
            q, k = _norm(q, sd, p + "attn.q_norm", ln), _norm(k, sd, p + "attn.k_norm", ln)
        q, k, v = (t.reshape(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        out = F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        x = x + sd[p + "ls1"] * out
        h = _norm(x, sd, p + "norm2", ln)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])), sd[p + "mlp.fc2.weight"],
                     sd[p + "mlp.fc2.bias"])
        x = x + sd[p + "ls2"] * h
    return x


@pytest.mark.parametrize("norm_type", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("layout", ["hf", "pth"])
def test_vision_tower_matches_official_math(tmp_path, norm_type, layout):
    cfg = tiny_config(norm_type)
    official = official_internvit(cfg.vision, layout, seed=3)
    hf_names = official if layout == "hf" else official_internvit(cfg.vision, "hf", seed=3)
    torch.save(official, tmp_path / "internvit.pth")
    model = InternVLC(cfg).eval()
    report = load_vision_weights(model, tmp_path / "internvit.pth")
    assert report.created == [] and report.unused == []
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.vision_tokens(pixels)
        ref = reference_internvit(hf_names, pixels, cfg.vision)
    assert ours.shape == (2, 17, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_type", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("layout", ["hf", "pth"])
def test_internvit_layout_round_trip_is_exact(norm_type, layout):
    cfg = tiny_config(norm_type).vision
    official = official_internvit(cfg, layout, seed=1)
    ours = official_vit.official_to_ours(official)
    assert "encoder.layer.1.attention.v_proj.weight" in ours and "encoder.layer.0.lambda_2" in ours
    back = official_vit.ours_to_official(ours, layout)
    assert back.keys() == official.keys()
    for key, value in official.items():
        assert torch.equal(back[key], value), key


def test_resize_position_embedding_keeps_cls_and_matches_bicubic():
    pos = torch.randn(1, 1 + 16, 8, dtype=torch.bfloat16)
    out = official_vit.resize_position_embedding(pos, 6)
    assert out.shape == (1, 37, 8) and out.dtype == torch.bfloat16
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].float().reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 36, 8)
    torch.testing.assert_close(out[:, 1:].float(), expect.to(torch.bfloat16).float())
    assert official_vit.resize_position_embedding(pos, 4) is pos


def test_lower_resolution_checkpoint_is_resized_on_load(tmp_path):
    small = tiny_config().vision
    small.image_size = 16  # 2x2 patch grid in the checkpoint, 4x4 in the model
    torch.save(official_internvit(small, "hf"), tmp_path / "vit.pth")
    model = InternVLC(tiny_config())
    report = load_vision_weights(model, tmp_path / "vit.pth")
    assert report.resized and model.vision.embeddings.position_embeddings.shape == (1, 17, 32)


def test_foreign_heads_are_unused_but_extra_layers_are_errors(tmp_path):
    cfg = tiny_config()
    official = official_internvit(cfg.vision, "pth")
    torch.save(dict(official, **{"head.weight": torch.zeros(3, 32)}), tmp_path / "cls.pth")
    report = load_vision_weights(InternVLC(cfg), tmp_path / "cls.pth")
    assert report.unused == ["head.weight"]
    deeper = tiny_config().vision
    deeper.num_layers = 3
    torch.save(official_internvit(deeper, "pth"), tmp_path / "deep.pth")
    with pytest.raises(CheckpointMismatchError, match="encoder.layer.2"):
        load_vision_weights(InternVLC(cfg), tmp_path / "deep.pth")
