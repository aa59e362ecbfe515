"""Optional LoRA (peft) on the inherited QLLaMA weights of stage 2, and merging it away for export.

The adapters go on the LLaMA self-attention and MLP projections of every layer (the cross-attention is new
and trains in full anyway). The frozen set then lists the frozen modules below the adapters, so freezing
never reaches the LoRA weights. Exports hold merged weights: a plain InternVL-G, loadable without peft.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

ADAPTER = "default"
LORA_TARGETS = r".*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def add_qllama_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Inject LoRA adapters (rank `rank`, scale alpha/rank) into `model.text.model` in place."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, model.text.model, adapter_name=ADAPTER)


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
    """`model`'s state dict with every LoRA delta added into its base weight and the adapter keys removed:
    the keys of the same model built without LoRA."""
    from peft.tuners.lora import LoraLayer

    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            base = state[f"{name}.base_layer.weight"]
            state[f"{name}.base_layer.weight"] = base + module.get_delta_weight(ADAPTER).to(base.dtype)
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
