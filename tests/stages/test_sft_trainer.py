"""Stage 3 through the real Trainer (DeepSpeed, gloo, world of one): export parity with plain transformers,
VQA results, and bit-exact resume with packing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from internvl_train.engine.trainer import Trainer
from internvl_train.stages.sft import SftStage


def fit(cfg, dist) -> Trainer:
    trainer = Trainer(cfg, SftStage(cfg, dist), dist)
    trainer.fit()
    return trainer


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss/loss"] for r in rows if "loss/loss" in r}


def test_export_loads_in_plain_transformers_with_the_training_logits(sft_cfg, dist, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cfg = sft_cfg("data.sft.packing=false")
    trainer = fit(cfg, dist)
    export = tmp_path / "run" / "export"
    plain = AutoModelForImageTextToText.from_pretrained(export).eval()
    assert type(plain).__name__ == "InternVLForConditionalGeneration"
    assert AutoProcessor.from_pretrained(export).image_seq_length == 16
    model = trainer.engine.module.eval()
    batch = next(iter(trainer.stage.build_train_loader()))
    with torch.no_grad():
        ours = trainer.stage.compute_losses(model, batch)  # the training forward (position ids, no mask)
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       position_ids=batch["position_ids"], use_cache=False).logits
        theirs = plain(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       attention_mask=batch["attention_mask"], use_cache=False).logits[..., :logits.shape[-1]]
    real = batch["attention_mask"].bool()
    assert torch.allclose(logits[real], theirs[real], atol=1e-5), (logits[real] - theirs[real]).abs().max()
    assert torch.isfinite(ours["loss"])
    result = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[-1])
    assert result["step"] == 2 and result["vqa/n_questions"] == 4
    assert 0 <= result["vqa/vqa_accuracy"] <= 100 and "vqa/majority_baseline" in result
    predictions = (tmp_path / "run" / "vqa_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4 and {"question_id", "answer", "references"} <= json.loads(predictions[0]).keys()
    assert (export / "official" / "config.json").is_file()


def test_resume_mid_run_with_packing_is_bit_exact(sft_cfg, dist, tmp_path):
    steps = ["trainer.max_steps=4", "trainer.save_every=2", "data.sft.packing=true", "stage.eval_max_questions=1"]
    fit(sft_cfg(*steps, run="full"), dist)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_2", tmp_path / "step_2")
    resumed = sft_cfg(*steps, f"resume={tmp_path / 'step_2'}", run="split")
    fit(resumed, dist)
    full, split = losses(tmp_path / "full"), losses(tmp_path / "split")
    assert list(full) == [1, 2, 3, 4] and list(split) == [3, 4]
    assert split[3] == full[3] and split[4] == full[4]  # exact: the packed rows continue where they stopped
    a = torch.load(tmp_path / "full" / "checkpoints" / "step_4" / "rank_0.pt", weights_only=False)["loader"]
    b = torch.load(tmp_path / "split" / "checkpoints" / "step_4" / "rank_0.pt", weights_only=False)["loader"]
    assert a == b and a["carry"] is not None  # a packed row was cut: its carried sample was restored
