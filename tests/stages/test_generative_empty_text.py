"""Stage 2's "ignore empty texts" rules, as the official InternVL-G forward: a caption that gives no token
has no ITC target (its row leaves both cross-entropies, its embedding stays a negative) and every ITM pair
with that text has no label. Checked against a reference written from those rules on a batch that triggers
both, where the ITM negatives are forced (duplicate captions leave one candidate) so the pairs are known."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from internvl_train.engine.stage_api import DistInfo
from internvl_train.stages.generative import GenerativeStage

from generative_helpers import compose_run, make_stage1_export

CAPTIONS = ["a small red circle", "", "a small red circle"]  # text 1 is empty; texts 0 and 2 are duplicates
BATCH = {"pixel_values": torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
         "captions": CAPTIONS, "keys": ["k0", "k1", "k2"]}


@pytest.fixture(scope="module")
def stage1_export(tmp_path_factory) -> Path:
    return make_stage1_export(tmp_path_factory.mktemp("stage1"))


def _stage_and_model(export: Path, *overrides: str):
    stage = GenerativeStage(compose_run(["stage=generative", f"init_from={export}", *overrides]), DistInfo())
    torch.manual_seed(0)
    return stage, stage.build_model().eval()


def _reference_itc(model, stage, tokens) -> torch.Tensor:
    inputs = stage._prepare(model, BATCH)
    image = F.normalize(model(tokens, task="encode_image_g"), dim=-1)
    text = F.normalize(model(inputs["input_ids"], inputs["attention_mask"], task="encode_text"), dim=-1)
    sim = model.logit_scale.exp() * image @ text.T
    targets = torch.tensor([0, -100, 2])  # row 1 ignored in both directions, still a column
    return (F.cross_entropy(sim, targets) + F.cross_entropy(sim.T, targets)) / 2


def _reference_itm(model, stage, tokens) -> torch.Tensor:
    """Kept pairs: positives (0,0), (2,2); image 1 -> text 0 (= text 2, same ids); image 1 for texts 0 and 2.
    Every pair with text 1 (image 0 -> 1, image 2 -> 1, a negative image for text 1) has no label."""
    inputs = stage._prepare(model, BATCH)
    images, texts = torch.tensor([0, 2, 1, 1, 1]), torch.tensor([0, 2, 0, 0, 2])
    logits = model(tokens[images], inputs["input_ids"][texts], inputs["attention_mask"][texts], task="itm_logits")
    return F.cross_entropy(logits.float(), torch.tensor([1, 1, 0, 0, 0]))


@torch.no_grad()
def test_empty_caption_rows_are_ignored_in_itc_and_itm_as_the_official_forward(stage1_export):
    stage, model = _stage_and_model(stage1_export)
    losses = stage.compute_losses(model, BATCH)
    tokens = model(BATCH["pixel_values"], task="vision_tokens")
    torch.testing.assert_close(losses["itc"], _reference_itc(model, stage, tokens), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["itm"], _reference_itm(model, stage, tokens), rtol=1e-5, atol=1e-6)
    assert losses["empty_texts"] == 1


@torch.no_grad()
def test_the_rule_can_be_switched_off_and_then_the_empty_row_counts(stage1_export):
    on_stage, model = _stage_and_model(stage1_export)
    off_stage, _ = _stage_and_model(stage1_export, "stage.ignore_empty_text=false")
    on, off = on_stage.compute_losses(model, BATCH), off_stage.compute_losses(model, BATCH)
    assert "empty_texts" not in off
    assert abs(float(on["itc"] - off["itc"])) > 1e-4 and abs(float(on["itm"] - off["itm"])) > 1e-4
    full = {**BATCH, "captions": ["a small red circle", "a green cross", "a small red circle"]}
    torch.testing.assert_close(on_stage.compute_losses(model, full)["loss"],
                               off_stage.compute_losses(model, full)["loss"])  # no empty text: the same



def test_a_rank_whose_texts_are_all_empty_trains_nothing_but_keeps_the_graph():
    from internvl_train.losses.itc import itc_loss
    from internvl_train.losses.itm import ItmNegatives, itm_loss

    image = F.normalize(torch.randn(2, 4), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(2, 4), dim=-1)
    loss = itc_loss(image, text, torch.tensor(10.0), ignore=torch.tensor([True, True]))
    loss.backward()
    assert loss.item() == 0 and torch.equal(image.grad, torch.zeros(2, 4))
    rows = torch.tensor([0, 1])
    negatives = ItmNegatives(rows.flip(0), rows, rows.flip(0), rows, skipped=0)
    head = torch.randn(4, 2, requires_grad=True)
    out = itm_loss(lambda i, t: image[i].detach() @ head, rows, negatives, torch.tensor([True, True]))
    out.loss.backward()
    assert out.loss.item() == 0 and torch.isfinite(head.grad).all() and out.accuracy == 0
