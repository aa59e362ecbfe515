"""Stage 2 (InternVL-G) through the real CLI entry (app.run: config checks, gloo, DeepSpeed ZeRO-1 Trainer)
from a stage-1 export made by the stage-1 export code: losses, frozen weights, evaluation and both exports."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from internvl_train.app import run
from internvl_train.models.internvl_g.build import build_internvl_g
from internvl_train.models.weights import from_pretrained, read_state_dict
from internvl_train.models.internvl_g.modeling import NEW_IN_G
from internvl_train.engine.stage_api import DistInfo
from internvl_train.stages.generative import GenerativeStage

from generative_helpers import compose_run, make_stage1_export, stage2_overrides

FROZEN_IN_STAGE2 = (r"vision\..*", r"clip_projector\..*", r"text_projection",
                    r"text\.(?!model\.layers\.\d+\.cross_attn\.).*")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


@pytest.fixture(scope="module")
def stage1_export(tmp_path_factory) -> Path:
    return make_stage1_export(tmp_path_factory.mktemp("stage1"))


@pytest.fixture
def stage2_cfg(tmp_path, stage1_export):
    """stage2_cfg(*extra_overrides) -> the composed tiny stage-2 config."""
    return lambda *extra: compose_run(stage2_overrides(tmp_path, stage1_export, extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, stage1_export):
    """One 3-step stage-2 run on ZeRO-1 with the paper's freezing (QLLaMA frozen); returns (cfg, run_dir)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage2")
    cfg = compose_run(stage2_overrides(root, stage1_export, ["deepspeed=zero1", "stage.train_qllama=false"]))
    run(cfg)
    return cfg, Path(cfg.run_dir)


def test_losses_are_named_finite_and_the_total_is_their_sum(trained):
    _, run_dir = trained
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss/loss" in r]
    assert len(steps) == 3
    for r in steps:
        terms = [r["loss/itc"], r["loss/itm"], r["loss/itg"]]
        assert all(math.isfinite(t) and t > 0 for t in terms)
        assert r["loss/loss"] == pytest.approx(sum(terms), rel=1e-5)
        assert r["loss/itm_skipped"] == 0 and 0 <= r["loss/itm_accuracy"] <= 1


def test_frozen_weights_bit_identical_and_new_parts_trained(trained, stage1_export):
    cfg, run_dir = trained
    stage1 = read_state_dict(stage1_export)
    exported = read_state_dict(run_dir / "export")
    frozen = [k for k in exported if _matches(k, FROZEN_IN_STAGE2)]
    assert len(frozen) > 40 and all(torch.equal(exported[k], stage1[k]) for k in frozen)
    torch.manual_seed(cfg.seed)  # the trainer seeds exactly so before building: this is the initial model
    initial = GenerativeStage(cfg, DistInfo()).build_model().state_dict()
    trained_keys = [k for k in exported if _matches(k, NEW_IN_G) or k == "logit_scale"]
    unchanged = [k for k in trained_keys if torch.equal(exported[k], initial[k])]
    assert len(trained_keys) > 10 and unchanged == []


def test_evaluation_reports_c_g_ensemble_itm_and_captions(trained):
    _, run_dir = trained
    results = json.loads((run_dir / "results.jsonl").read_text().splitlines()[-1])
    for encoder in ("c", "g", "cg", "g_itm"):
        assert 0 <= results[f"small/{encoder}/i2t_R@1"] <= 100
    assert results["small/caption/n_images"] == 8
    for key in ("bleu4", "cider", "baseline_bleu4", "baseline_cider", "itg_loss", "itg_loss_other_image"):
        assert math.isfinite(results[f"small/caption/{key}"])
    assert results["small/caption/itg_loss"] > 0 and results["small/caption/itg_loss_other_image"] > 0


def test_exports_load_back_ours_and_official(trained):
    cfg, run_dir = trained
    ours = from_pretrained(run_dir / "export")
    expected = read_state_dict(run_dir / "export")
    assert all(torch.equal(v, expected[k]) for k, v in ours.state_dict().items())
    official = build_internvl_g(cfg.model, vocab_size=ours.text.config.vocab_size,
                                init_from=str(run_dir / "export" / "official"))
    assert all(torch.equal(v, expected[k]) for k, v in official.state_dict().items())
    assert (run_dir / "export" / "tokenizer_config.json").is_file()


def test_itm_with_a_global_batch_of_one_is_skipped_not_nan(stage2_cfg):
    stage = GenerativeStage(stage2_cfg(), DistInfo())
    torch.manual_seed(0)
    model = stage.build_model()
    batch = {"pixel_values": torch.randn(1, 3, 64, 64), "captions": ["a small red circle"], "keys": ["k0"]}
    losses = stage.compute_losses(model, batch)
    assert losses["itm_skipped"] == 2 and losses["itm"] == 0
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.query_tokens.grad is not None and torch.isfinite(model.query_tokens.grad).all()


def test_missing_default_stage1_export_names_init_from_and_the_command(tmp_path, monkeypatch):
    from internvl_train.config import check_run_config
    from internvl_train.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_run_config(compose_run(["stage=generative"]))
    assert err.value.key == "init_from"
    assert "runs/contrastive/export" in err.value.reason
    assert "python -m internvl_train stage=contrastive" in err.value.reason
    (tmp_path / "runs" / "contrastive" / "export").mkdir(parents=True)
    check_run_config(compose_run(["stage=generative"]))  # the default is taken when it exists
