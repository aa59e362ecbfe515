"""The planner's command line on the paper recipes: no GPU, no data, no weights; a table in seconds."""
from __future__ import annotations

import re

import pytest
import torch

from plan_helpers import compose, run_planner

# A 2-core shared CPU spends most of this importing torch and transformers; the meta model itself is instant.
MAX_SECONDS = 90


def _row(output: str, label: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.strip().startswith(label))
    return line.split()


def _count(text: str) -> float:
    """A printed parameter count: 12.82B, 393.22K, 0."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1])
    return float(text[:-1]) * scale if scale else float(text)


def _meta_internvl_c_params() -> int:
    from internvl_train.models.internvl_c.modeling import InternVLC

    with torch.device("meta"):
        model = InternVLC(compose(["experiment=internvl_c_stage1"]).model)
    return sum(p.numel() for p in model.parameters())


def test_internvl_c_stage1_at_64_gpus(tmp_path):
    result, seconds = run_planner(["experiment=internvl_c_stage1", "plan.gpus=64"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert seconds < MAX_SECONDS
    params = _meta_internvl_c_params()
    assert 12.5e9 < params < 13.5e9  # InternViT-6B + multilingual LLaMA-7B: the paper's ~13B InternVL-C
    total, trainable, frozen = (_count(v) for v in _row(out, "all")[1:4])
    assert total == pytest.approx(params, rel=0.005) and trainable == total and frozen == 0
    for part in ("ViT", "text tower (LLaMA)", "heads"):
        assert part in out
    assert "ZeRO-3 over 64 ranks" in out and "bf16" in out
    weights_gb = float(_row(out, "weights")[1])
    assert weights_gb == pytest.approx(2 * params / 64 / 1e9, abs=0.01)  # ZeRO-3: 2P/N bytes of bf16 weights
    assert float(_row(out, "optimizer states")[2]) == pytest.approx(12 * params / 64 / 1e9, abs=0.01)
    assert re.search(r"total\s+[\d.]+\s+of 80 GB: fits, headroom [\d.]+ GB", out)
    assert "global 16384 per step" in out and "MFU of 40%" in out
    assert re.search(r"FLOPs per sample\s+12\.\d+ TFLOP", out)  # 9.2 TFLOP ViT (paper) + ~3.1 text tower


@pytest.mark.parametrize("recipe, expect", [
    ("internvl_g_stage2", ["ZeRO-2 over 8 ranks", "QLLaMA cross-attn", "queries"]),
    ("sft_internvit6b_vicuna13b", ["ZeRO-3 over 8 ranks", "bridge (mlp1)", "LLM", "conversation of <= 2048 tokens"]),
])
def test_stage2_and_sft_recipes(tmp_path, recipe, expect):
    result, seconds = run_planner([f"experiment={recipe}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert seconds < MAX_SECONDS
    for text in expect:
        assert text in result.stdout
    vit_total, vit_trainable = _row(result.stdout, "ViT")[1:3]
    assert _count(vit_total) > 5e9 and vit_trainable == "0"  # the frozen InternViT-6B of both recipes
    assert re.search(r"total\s+[\d.]+\s+of 80 GB: (fits|DOES NOT FIT), headroom -?[\d.]+ GB", result.stdout)


def test_unknown_plan_key_is_rejected(tmp_path):
    result, _ = run_planner(["plan.gpu=64"], tmp_path)
    assert result.returncode == 2
    assert "config error: plan.gpu: unknown plan key; did you mean plan.gpus?" in result.stderr
