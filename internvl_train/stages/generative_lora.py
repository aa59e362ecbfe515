"""Optional LoRA (peft) on the inherited QLLaMA weights of stage 2, and merging it away for export.

The adapters go on the LLaMA self-attention and MLP projections of every layer (the cross-attention is new
and trains in full anyway). The frozen set then lists the frozen modules below the adapters, so freezing
never reaches the LoRA weights (models/lora.py: without_lora). Exports hold merged weights
(models/lora.py: merged_state_dict): a plain InternVL-G, loadable without peft.
"""
from __future__ import annotations

from torch import nn

ADAPTER = "default"
LORA_TARGETS = r".*layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def add_qllama_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Inject LoRA adapters (rank `rank`, scale alpha/rank) into `model.text.model` in place."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
    inject_adapter_in_model(config, model.text.model, adapter_name=ADAPTER)
