"""The activation estimate against what autograd really keeps in a CPU forward of the tiny stage-1 model.

Measured: the distinct storages saved for backward (torch.autograd.graph.saved_tensors_hooks; parameters
excluded), plus, with gradient checkpointing, the inputs each checkpointed layer keeps to recompute from
(non-reentrant checkpointing stores them outside the saved-tensor hooks), plus the forward's text logits
(alive until the loss). The planner's estimate of the same thing (held at the end of the forward, before the
recomputation peak) must be within TOLERANCE.
"""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from internvl_train.losses.itg import next_token_ce
from internvl_train.plan.planner import build_plan
from internvl_train.plan.settings import PlanSettings
from plan_helpers import compose

TOLERANCE = 0.10  # measured within 4% (fp32 and bf16, with and without checkpointing)
BATCH = 4
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def measured_activation_bytes(model: torch.nn.Module, cfg, dtype: torch.dtype) -> float:
    """Bytes per sample kept for the backward of the stage-1 forward (ITC inputs + the text LM loss)."""
    kept: dict[int, int] = {}
    params = {_storage(p)[0] for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage(t)
        kept[ptr] = nbytes
        return t

    def keep_layer_input(module, args, kwargs):
        ptr, nbytes = _storage(args[0] if args else kwargs["hidden_states"])
        kept[ptr] = nbytes

    hooks = [m.register_forward_pre_hook(keep_layer_input, with_kwargs=True) for m in model.modules()
             if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    generator = torch.Generator().manual_seed(0)
    size, text_len = cfg.model.vision.image_size, cfg.stage.max_text_len
    pixels = torch.randn(BATCH, 3, size, size, generator=generator).to(dtype)
    ids = torch.randint(6, model.text.config.vocab_size, (BATCH, text_len), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(pixels, ids, torch.ones_like(ids), text_logits=True)
        loss = next_token_ce(out["text_logits"], ids) + out["image_embeds"].sum() + out["text_embeds"].sum() \
            + out["logit_scale"]
    for hook in hooks:
        hook.remove()
    kept[_storage(out["text_logits"])[0]] = _storage(out["text_logits"])[1]
    loss.backward()  # the graph was real: the checkpointed layers recompute and every parameter gets a gradient
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return sum(n for ptr, n in kept.items() if ptr not in params) / BATCH


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimate_matches_a_measured_forward(precision, checkpointing):
    from internvl_train.models.internvl_c.modeling import InternVLC

    flag = str(checkpointing).lower()
    cfg = compose([f"trainer.precision={precision}", f"model.vision.gradient_checkpointing={flag}",
                   f"model.text.gradient_checkpointing={flag}", f"trainer.micro_batch_size={BATCH}"])
    plan = build_plan(cfg, PlanSettings(gpus=1))
    torch.manual_seed(0)
    model = InternVLC(cfg.model, plan.model.model.text.config.vocab_size).to(DTYPES[precision]).train()
    measured = measured_activation_bytes(model, cfg, DTYPES[precision])
    estimate = plan.workload.activations.held(checkpointing)
    assert estimate == pytest.approx(measured, rel=TOLERANCE), (estimate, measured)
    if checkpointing:  # the recomputed layer comes on top during the backward
        assert plan.workload.activations.peak(True) > estimate


def test_checkpointing_saves_most_of_it():
    plan = build_plan(compose(["experiment=internvl_c_stage1"]), PlanSettings(gpus=64))
    acts = plan.workload.activations
    assert acts.peak(True) < 0.1 * acts.peak(False)  # 48 + 32 layers: one layer input each instead of ~45 h
