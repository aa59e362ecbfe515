"""Stage-2 parts: rank-count invariance of ITC + ITM on real gloo ranks, LoRA on QLLaMA merged into the export,
training QLLaMA in full, greedy caption decoding, the image-grounding ITG metric."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from internvl_train.engine.freeze import freeze_modules
from internvl_train.models.weights import from_pretrained
from internvl_train.models.internvl_g.generation import greedy_caption_ids
from internvl_train.engine.stage_api import DistInfo
from internvl_train.stages.generative import GenerativeStage
from internvl_train.stages.generative_eval import _itg_loss_sums

from generative_helpers import compose_run, make_stage1_export

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def stage1_export(tmp_path_factory) -> Path:
    return make_stage1_export(tmp_path_factory.mktemp("stage1"))


def _torchrun(world: int, export: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parents[1])])}
    with socket.socket() as s:  # a free port for this rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", f"--master_port={port}",
               str(HERE / "generative_two_ranks.py"), str(export), str(out)]
    result = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
def test_two_rank_step_equals_one_rank_step_for_itc_and_itm(stage1_export, tmp_path):
    one = _torchrun(1, stage1_export, tmp_path / "one.pt")
    two = _torchrun(2, stage1_export, tmp_path / "two.pt")
    assert one["itm_skipped"] == 0 and two["itm_skipped"] == 0
    assert set(one) == set(two) and {"query_tokens", "itm_head.weight", "logit_scale"} <= set(one)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-6, msg=key)


def test_lora_trains_adapters_only_and_export_merges_them(stage1_export, tmp_path):
    cfg = compose_run(["stage=generative", f"init_from={stage1_export}", "stage.train_qllama=false",
                       "stage.lora_rank=2"])
    stage = GenerativeStage(cfg, DistInfo())
    model = stage.build_model()
    freeze_modules(stage.frozen_modules(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trainable) and any(".lora_B." in n for n in trainable)
    assert not any("base_layer" in n or n.startswith("vision.") for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)  # a trained adapter: the merge must carry its delta
    model.eval()
    vision = torch.randn(2, 65, 64)
    ids, mask = torch.randint(3, 60, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        expected = model(vision, ids, mask, task="itg_logits")
        stage.export(model, str(tmp_path / "export"))
        merged = from_pretrained(tmp_path / "export").eval()
        torch.testing.assert_close(merged(vision, ids, mask, task="itg_logits"), expected, rtol=1e-4, atol=1e-4)
    from internvl_train.models.weights import read_state_dict

    exported, stage1 = read_state_dict(tmp_path / "export"), read_state_dict(stage1_export)
    assert not any("lora" in k or "base_layer" in k for k in exported)
    q_proj = "text.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported[q_proj], stage1[q_proj])  # the adapter's delta is in the exported weight


def test_greedy_decoding_stops_at_eos_and_strips_the_prompt():
    vocab, eos = 6, 2
    script = [4, 5, 3, eos]  # the caption a fake ITG head "knows", by position after the prompt

    def itg_logits(vision, ids, mask):
        step = ids.shape[1] - 2  # prompt of 2 tokens
        logits = torch.zeros(ids.shape[0], ids.shape[1], vocab)
        logits[0, -1, script[min(step, 3)]] = 1.0
        logits[1, -1, eos] = 1.0  # image 1: empty caption
        return logits

    out = greedy_caption_ids(itg_logits, torch.zeros(2, 3, 4), torch.tensor([1, 7]), eos, max_new_tokens=10)
    assert out == [[4, 5, 3], []]
    assert greedy_caption_ids(itg_logits, torch.zeros(2, 3, 4), torch.tensor([1, 7]), eos, 2) == [[4, 5], []]


def test_train_qllama_trains_the_inherited_text_tower_through_every_loss(stage1_export):
    cfg = compose_run(["stage=generative", f"init_from={stage1_export}", "stage.train_qllama=true",
                       "stage.itm_weight=0", "stage.itg_weight=0"])  # ITC alone: the text embedding path
    stage = GenerativeStage(cfg, DistInfo())
    torch.manual_seed(0)
    model = stage.build_model()
    freeze_modules(stage.frozen_modules(model))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("vision.", "clip_projector.")) or n == "text_projection" for n in frozen)
    batch = {"pixel_values": torch.randn(4, 3, 64, 64), "captions": ["a small red circle", "a large blue square",
             "a green cross", "a purple triangle"], "keys": ["k0", "k1", "k2", "k3"]}
    stage.compute_losses(model, batch)["loss"].backward()
    inherited = model.text.model.layers[1].self_attn.q_proj.weight  # no cross-attention in layer 1
    assert inherited.grad is not None and inherited.grad.abs().sum() > 0


def test_itg_grounding_metric_is_equal_for_an_image_blind_captioner(stage1_export):
    cfg = compose_run(["stage=generative", f"init_from={stage1_export}"])
    stage = GenerativeStage(cfg, DistInfo())
    torch.manual_seed(0)
    model = stage.build_model().eval()
    tokens, captions = torch.randn(3, 65, 64), ["a small red circle", "a large blue square", "a green cross"]
    prefix_len = len(stage.itg_prompt)
    with torch.no_grad():
        for layer in model.text.model.layers:
            if layer.cross_attn is not None:
                layer.cross_attn.o_proj.weight.normal_(std=0.5)
        seeing = _itg_loss_sums(model, tokens, captions, stage.tokenizer, cfg.stage, prefix_len)
        for layer in model.text.model.layers:
            if layer.cross_attn is not None:
                layer.cross_attn.o_proj.weight.zero_()  # the queries no longer depend on the image
        blind = _itg_loss_sums(model, tokens, captions, stage.tokenizer, cfg.stage, prefix_len)
    assert seeing[2] == blind[2] > 0  # the same supervised caption tokens
    assert abs(seeing[0] - seeing[1]) > 1e-3 and blind[0] == blind[1]
    assert _itg_loss_sums(model, tokens[:1], captions[:1], stage.tokenizer, cfg.stage, prefix_len).sum() == 0
