"""LoRA (peft) adapters on any of our models: finding them, keeping them out of frozen sets, and merging
them into their base weights for export (a plain model that loads without peft). Which modules get
adapters is each stage's choice (stages/generative_lora.py, stages/sft_model.py)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def has_lora(model: nn.Module) -> bool:
    return any(part.startswith("lora_") for name, _ in model.named_parameters() for part in name.split("."))


def without_lora(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The same modules, descending into any that holds LoRA weights and leaving those weights out."""
    out: list[nn.Module] = []
    for module in modules:
        if not has_lora(module):
            out.append(module)
            continue
        for name, child in module.named_children():
            if not name.startswith("lora_"):
                out.extend(without_lora([child]))
    return out


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every active LoRA adapter merged into its base weight (summed in fp32, cast
    back), under the plain names (`...q_proj.weight`, `...q_proj.bias`): the keys of the model built
    without LoRA. A model without adapters gives its own state dict."""
    from peft.tuners.lora import LoraLayer

    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = state.pop(f"{name}.base_layer.weight")
        delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
        state[f"{name}.weight"] = (weight.float() + delta.float()).to(weight.dtype)
        if f"{name}.base_layer.bias" in state:
            state[f"{name}.bias"] = state.pop(f"{name}.base_layer.bias")
    return {k: v for k, v in state.items() if ".lora_" not in k}
