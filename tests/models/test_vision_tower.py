"""Drop-path (train only, off in eval and when frozen), activation checkpointing and attention backends."""
from __future__ import annotations

import torch
from internvl_tiny import tiny_config

from internvl_train.models.internvit.modeling import DropPath, build_vision_tower


def _tower(drop_path_rate: float = 0.5, checkpointing: bool = False, attn: str = "sdpa"):
    cfg = tiny_config(drop_path_rate=drop_path_rate).vision
    cfg.gradient_checkpointing, cfg.attn_implementation = checkpointing, attn
    torch.manual_seed(0)
    return build_vision_tower(cfg)


def test_drop_path_rates_rise_linearly_and_leave_state_dict_alone():
    tower = _tower(0.5)
    rates = [getattr(layer, "drop_path", None) for layer in tower.encoder.layer]
    assert rates[0] is None and isinstance(rates[1], DropPath) and rates[1].drop_prob == 0.5
    assert set(tower.state_dict()) == set(_tower(0.0).state_dict())


def test_drop_path_active_in_train_off_in_eval_and_when_frozen():
    tower = _tower(0.5)
    pixels = torch.randn(8, 3, 32, 32)
    tower.train()
    runs = [tower(pixel_values=pixels).last_hidden_state for _ in range(3)]
    assert not torch.allclose(runs[0], runs[1]) or not torch.allclose(runs[1], runs[2])
    tower.eval()
    with torch.no_grad():
        ref = tower(pixel_values=pixels).last_hidden_state
        assert torch.equal(ref, tower(pixel_values=pixels).last_hidden_state)
    tower.train()
    tower.requires_grad_(False)  # frozen tower left in train mode: still deterministic
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values=pixels).last_hidden_state, ref)


def test_drop_path_drops_whole_samples():
    drop = DropPath(0.5).train()
    branch = torch.nn.Linear(4, 4)
    out = drop.mlp_hook(branch, (), torch.ones(64, 5, 4))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)


def test_checkpointing_recomputes_the_same_drop_path_masks():
    pixels = torch.randn(4, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        tower = _tower(0.5, checkpointing).train()
        assert all(layer.gradient_checkpointing == checkpointing for layer in tower.encoder.layer)
        torch.manual_seed(123)
        tower(pixel_values=pixels).last_hidden_state.square().mean().backward()
        grads.append(tower.embeddings.patch_embeddings.projection.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_eager_and_sdpa_agree():
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = _tower(0.0, attn="sdpa").eval()(pixel_values=pixels).last_hidden_state
        b = _tower(0.0, attn="eager").eval()(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_norm_eps_reaches_the_qk_rmsnorm():
    cfg = tiny_config().vision
    cfg.norm_eps = 1e-2  # transformers alone would keep its fixed 1e-6 in q_norm / k_norm
    tower = build_vision_tower(cfg)
    for layer in tower.encoder.layer:
        assert layer.attention.q_norm.variance_epsilon == layer.attention.k_norm.variance_epsilon == 1e-2
    norm = tower.encoder.layer[1].attention.q_norm
    x = torch.full((1, 3, cfg.hidden_size), 0.01)  # mean square 1e-4: eps 1e-2 vs 1e-6 changes the output 10x
    with torch.no_grad():
        torch.testing.assert_close(norm(x), norm.weight * x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-2))
