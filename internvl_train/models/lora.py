"""LoRA (peft) adapters on any of our models: finding them, keeping them out of frozen sets, and merging
them into their base weights for export (a plain model that loads without peft). Which modules get
adapters is each stage's choice (stages/generative_lora.py, stages/sft_model.py)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def has_lora(model: nn.Module) -> bool:
    return any(part.startswith("lora_") for name, _ in model.named_parameters() for part in name.split("."))


class OwnParameters(nn.Module):
    """The parameters a module holds itself, not its children's: how a frozen set names the own weights of a
    module that also holds adapters (InternViT's layer scales lambda_1/2 next to its LoRA'd attention)."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule: parameters() must not recurse into it

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        return self.owner.named_parameters(prefix, recurse=False, remove_duplicate=remove_duplicate)


def without_lora(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The same modules with every LoRA weight left out, for a frozen set: a module without adapters as it
    is; one holding adapters split into its children without them plus its own parameters (OwnParameters)."""
    out: list[nn.Module] = []
    for module in modules:
        if not has_lora(module):
            out.append(module)
            continue
        if any(True for _ in module.parameters(recurse=False)):
            out.append(OwnParameters(module))
        out.extend(without_lora([child for name, child in module.named_children() if not name.startswith("lora_")]))
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
