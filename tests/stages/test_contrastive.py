"""Stage 1 (contrastive): lock options, exact gradients across ranks and across accumulation micro-steps."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contrastive_helpers import fixed_global_batch, flat_grads, slice_batch, stage1_cfg
from internvl_train.app import run
from internvl_train.models.weights import from_pretrained
from internvl_train.engine.stage_api import DistInfo
from internvl_train.stages.contrastive import ContrastiveStage

HERE = Path(__file__).resolve().parent


def initial_model(cfg) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return ContrastiveStage(cfg, DistInfo()).build_model()


def test_lock_options_keep_locked_parameters_bit_identical(tmp_path):
    cfg = stage1_cfg(tmp_path, "stage.lock_vision=true", "stage.unlocked_vision_layers=1", "stage.lock_text=true")
    before = {k: v.clone() for k, v in initial_model(cfg).state_dict().items()}
    run(cfg)
    after = from_pretrained(tmp_path / "run" / "export").state_dict()
    locked = [k for k in before if k.startswith(("vision.embeddings", "vision.encoder.layer.0.", "text."))]
    trained = [k for k in before if k.startswith(("vision.encoder.layer.1.", "clip_projector", "text_projection"))]
    assert locked and trained
    for key in locked:
        assert torch.equal(before[key], after[key]), f"locked {key} changed"
    changed = [k for k in trained if not torch.equal(before[k], after[k])]
    assert len(changed) == len(trained), f"unlocked parameters that did not train: {set(trained) - set(changed)}"


def test_stage_loss_gradient_is_the_same_on_two_ranks_as_on_one(tmp_path):
    """ITC (+ the text tower's LM term, on by default for the random tiny tower) through the stage on 2 gloo
    ranks (half the global batch each, gradients averaged as the engine does) equals one process on the whole
    global batch."""
    batch = fixed_global_batch(tmp_path)
    torch.save(batch, tmp_path / "batch.pt")
    cfg = stage1_cfg(tmp_path)
    model = initial_model(cfg)
    loss = ContrastiveStage(cfg, DistInfo()).compute_losses(model, batch)["loss"]
    loss.backward()
    expected = flat_grads(model)
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29561",
                    str(HERE / "contrastive_two_ranks.py"), str(tmp_path)], check=True, env=env, timeout=300)
    got = torch.load(tmp_path / "grads_rank0.pt")
    assert got.keys() == expected.keys()
    floor = global_norm(expected) * 1e-5
    for key in expected:
        assert relative_error(got[key], expected[key], floor) < 1e-4, key


def test_accumulation_gives_the_gradient_of_the_whole_step_batch(tmp_path):
    """Through a real DeepSpeed engine with SGD(lr=1): the weight change is minus the gradient, so two
    micro-batches with the embedding cache must move the weights exactly as one batch of twice the size
    (the text LM term, on by default here, included: lm_head must move identically too)."""
    batch = fixed_global_batch(tmp_path)
    deltas = {}
    for accum, micro in ((1, [batch]), (2, [slice_batch(batch, slice(0, 4)), slice_batch(batch, slice(4, 8))])):
        cfg = stage1_cfg(tmp_path, f"trainer.grad_accum_steps={accum}", f"trainer.micro_batch_size={8 // accum}")
        deltas[accum] = sgd_step_delta(cfg, micro)
    assert deltas[1].keys() == deltas[2].keys()
    assert deltas[1]["text.lm_head.weight"].abs().sum() > 0, "the text LM term did not reach lm_head"
    floor = global_norm(deltas[1]) * 1e-5
    for key in deltas[1]:
        assert relative_error(deltas[2][key], deltas[1][key], floor) < 1e-4, key
    naive = plain_summed_losses_gradient(stage1_cfg(tmp_path), batch)
    assert max(relative_error(naive[k], -deltas[1][k], floor) for k in naive) > 1e-2, \
        "summing per-micro-batch ITC losses should differ from the exact step gradient"


def relative_error(got: torch.Tensor, expected: torch.Tensor, floor: float) -> float:
    """|got - expected| / max(|expected|, floor) over the whole tensor. Float32 reductions in another order
    differ in the last bits; the floor keeps gradients that are zero in exact arithmetic (e.g. a key bias under
    softmax) from turning that noise into a large relative error."""
    return float((got.double() - expected.double()).norm() / max(float(expected.double().norm()), floor))


def global_norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.stack([t.double().norm() for t in tensors.values()]).norm())


def sgd_step_delta(cfg, micro_batches: list[dict]) -> dict[str, torch.Tensor]:
    import deepspeed

    from internvl_train.engine import distributed

    distributed.init_distributed(60)
    stage = ContrastiveStage(cfg, DistInfo())
    model = initial_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ds_config = {"train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
                 "gradient_accumulation_steps": cfg.trainer.grad_accum_steps, "zero_optimization": {"stage": 0}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                      config=ds_config, dist_init_required=False)
    stage.train_step(engine, micro_batches)
    return {n: p.detach() - before[n] for n, p in engine.module.named_parameters()}


def plain_summed_losses_gradient(cfg, batch: dict) -> dict[str, torch.Tensor]:
    """What naive accumulation computes: the mean of two half-batch ITC losses."""
    stage, model = ContrastiveStage(cfg, DistInfo()), initial_model(cfg)
    for rows in (slice(0, 4), slice(4, 8)):
        (stage.compute_losses(model, slice_batch(batch, rows))["loss"] / 2).backward()
    return flat_grads(model)


def test_text_lm_term_is_on_for_a_random_text_tower_and_trains_only_through_its_weight(tmp_path):
    batch = fixed_global_batch(tmp_path)
    grads = {}
    for weight in ("null", "0", "2.5"):
        cfg = stage1_cfg(tmp_path, f"stage.text_lm_weight={weight}")
        stage, model = ContrastiveStage(cfg, DistInfo()), initial_model(cfg)
        losses = stage.compute_losses(model, batch)
        losses["loss"].backward()
        grads[weight] = model.text.lm_head.weight.grad
        if weight == "0":
            assert "text_lm" not in losses and torch.equal(losses["loss"], losses["itc"])
            continue
        w = 1.0 if weight == "null" else 2.5  # null: the tiny tower starts random, so the LM term is on
        assert stage.text_lm_weight == w and losses["text_lm"].item() > 1.0  # an untrained LM: far from 0
        assert torch.allclose(losses["loss"], losses["itc"] + w * losses["text_lm"])
    assert grads["0"] is None, "without the LM term nothing reaches lm_head (ITC reads the EOS state only)"
    assert torch.allclose(grads["2.5"], 2.5 * grads["null"], rtol=1e-4, atol=1e-9)


def test_text_lm_weight_null_is_off_for_a_pretrained_text_tower(tmp_path):
    from generative_helpers import compose_run
    from internvl_train.stages.config import resolved_text_lm_weight

    assert resolved_text_lm_weight(compose_run(["stage=contrastive"])) == 1.0
    for start in ("model.text.pretrained=/llama-7b", "init_from=/stage1/export", "model.pretrained=/internvl-14b"):
        assert resolved_text_lm_weight(compose_run(["stage=contrastive", start])) == 0.0, start
    assert resolved_text_lm_weight(compose_run(["stage=contrastive", "model.text.pretrained=/x",
                                                "stage.text_lm_weight=0.5"])) == 0.5


def test_paper_recipe_composes_and_names_missing_shards(tmp_path, monkeypatch):
    from generative_helpers import compose_run
    from internvl_train.config import check_run_config
    from internvl_train.errors import ConfigError

    monkeypatch.setenv("INTERNVL_DATA", str(tmp_path))
    cfg = compose_run(["experiment=internvl_c_stage1"])
    assert cfg.model.name == "internvl_c_6b" and cfg.model.vision.num_layers == 48
    assert cfg.deepspeed.zero_stage == 3 and cfg.trainer.precision == "bf16" and cfg.data.resampled
    assert [s.weight for s in cfg.data.sources] == [1.94, 1.87, 0.55, 0.54, 0.07]
    assert not cfg.stage.lock_vision and not cfg.stage.lock_text
    with pytest.raises(ConfigError) as err:
        check_run_config(cfg)
    assert err.value.key == "data.sources[0].urls" and str(tmp_path) in err.value.reason


def test_a_prefix_that_merges_with_the_caption_is_rejected_when_it_masks_lm_labels(tmp_path):
    """With the demo tokenizer "re" alone and "re" + "d circle" ("red ...") tokenise differently: the LM
    labels would be masked one token off, so the stage refuses, naming the key; pure ITC does not care."""
    batch = {**fixed_global_batch(tmp_path), "captions": ["d circle in the center"] * 8}
    cfg = stage1_cfg(tmp_path, "stage.caption_prefix=re")
    with pytest.raises(ValueError, match="stage.caption_prefix='re' does not tokenise the same"):
        ContrastiveStage(cfg, DistInfo()).compute_losses(initial_model(cfg), batch)
    cfg = stage1_cfg(tmp_path, "stage.caption_prefix=re", "stage.text_lm_weight=0")
    assert torch.isfinite(ContrastiveStage(cfg, DistInfo()).compute_losses(initial_model(cfg), batch)["loss"])
