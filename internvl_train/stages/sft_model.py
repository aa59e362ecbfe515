"""Stage-3 model plumbing: where the ViT and the tokenizer come from, which parts train, LoRA adapters (peft)
and their merge for export."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from torch import nn

from internvl_train.errors import ConfigError
from internvl_train.models.chat.modeling import InternVLChatModel, chat_parts
from internvl_train.models.chat.build import is_chat_checkpoint
from internvl_train.models.lora import without_lora
from internvl_train.models.tokenizer import first_tokenizer_dir, load_local_tokenizer
from internvl_train.stages.contrastive import locked_modules

log = logging.getLogger(__name__)

LLM_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"]
PRODUCE_PREVIOUS = ("python -m internvl_train stage=contrastive   # stage 1 -> runs/contrastive/export\n"
                    "  python -m internvl_train stage=generative    # stage 2 -> runs/generative/export")


def resolve_vision_init(cfg: Any) -> Optional[str]:
    """The checkpoint the chat model starts from: `init_from`; None for a scratch ViT or official
    `model.vision.pretrained` weights; else the first existing `stage.previous_exports` directory."""
    stage = cfg.stage
    if cfg.init_from or stage.vision_init == "scratch" or cfg.model.vision.pretrained:
        return cfg.init_from or None
    path = _first_previous_export(stage.previous_exports, "the ViT")
    if path is None:
        raise ConfigError(
            "init_from", f"null and no previous stage export exists (looked for {list(stage.previous_exports)}, "
            f"relative to {os.getcwd()}). Produce one with\n  {PRODUCE_PREVIOUS}\nor pass init_from=<stage-1/2 "
            "export or chat checkpoint>, model.vision.pretrained=<official InternViT>, or stage.vision_init=scratch")
    return path


def _first_previous_export(candidates: Any, what: str) -> Optional[str]:
    for path in candidates:
        if os.path.isdir(path):
            log.info("init_from is null: %s comes from the previous stage's export %s", what, path)
            return path
    return None


def resolve_text_tower_source(cfg: Any, init_from: Optional[str]) -> Optional[str]:
    """With model.chat.llm_from_text_tower: the stage-1/2 export whose text tower becomes the LLM: `init_from`,
    else the first existing `stage.previous_exports` directory, also for a scratch ViT (so the ablation
    of stages 1-2 changes the ViT alone). None without the option, or when continuing a chat checkpoint."""
    if not cfg.model.chat.llm_from_text_tower or (init_from and is_chat_checkpoint(init_from)):
        return None
    path = init_from or _first_previous_export(cfg.stage.previous_exports, "the LLM (its text tower)")
    if path is None:
        raise ConfigError(
            "model.chat.llm_from_text_tower", f"true takes the LLM from a stage-1/2 export's text tower, and none "
            f"exists (init_from is null; looked for {list(cfg.stage.previous_exports)}, relative to {os.getcwd()}). "
            f"Produce one with\n  {PRODUCE_PREVIOUS}\nor pass init_from=<stage-1/2 export>, or set "
            "model.chat.llm_from_text_tower=false (a new LLM from model.chat.llm, or model.chat.llm_path)")
    return path


def sft_tokenizer_candidates(cfg: Any, init_from: Optional[str], text_tower_from: Optional[str]) -> list:
    """Where the LLM's tokenizer may be, in order: a chat checkpoint's own, model.chat.llm_path's, the
    text-tower export's (model.chat.llm_from_text_tower), model.text.tokenizer, the init_from export's (stages
    1/2 export theirs). The stage and the planner take the first that holds one."""
    chat, text = cfg.model.chat, cfg.model.text
    return [init_from if init_from and is_chat_checkpoint(init_from) else None, chat.llm_path, text_tower_from,
            text.tokenizer, init_from]


def load_sft_tokenizer(cfg: Any, init_from: Optional[str], text_tower_from: Optional[str] = None) -> Any:
    """The LLM's tokenizer: the first of sft_tokenizer_candidates, else the demo tokenizer (demo data)."""
    path = first_tokenizer_dir(sft_tokenizer_candidates(cfg, init_from, text_tower_from))
    if path is not None:
        return load_local_tokenizer(path)
    if cfg.data.demo or cfg.data.sft.demo:
        from data_pipelines.demo import ensure_demo_data

        return load_local_tokenizer(ensure_demo_data().tokenizer_dir)
    raise ConfigError("model.chat.llm_path", "no tokenizer for the chat LLM: set model.chat.llm_path (a local HF "
                                             "model directory with its tokenizer) or model.text.tokenizer")


def add_lora_adapters(model: InternVLChatModel, stage: Any) -> list[str]:
    """Inject LoRA (peft) into the LLM and/or the ViT per stage.lora_*_rank; returns the adapted parts."""
    from peft import LoraConfig, inject_adapter_in_model

    adapted = []
    for part, rank, targets in (("llm", stage.lora_llm_rank, LLM_LORA_TARGETS),
                                ("vision", stage.lora_vision_rank, VISION_LORA_TARGETS)):
        if rank <= 0:
            continue
        module = model.model.language_model if part == "llm" else model.model.vision_tower
        config = LoraConfig(r=rank, lora_alpha=stage.lora_alpha_ratio * rank, lora_dropout=stage.lora_dropout,
                            target_modules=targets)
        inject_adapter_in_model(config, module)
        n = sum(p.numel() for name, p in module.named_parameters() if "lora_" in name)
        log.info("new: LoRA rank %d on the %s (%s): %d parameters", rank, part, ",".join(targets), n)
        adapted.append(part)
    return adapted


def frozen_parts(model: InternVLChatModel, stage: Any) -> list[nn.Module]:
    """Modules that do not train: frozen parts whole, or, with LoRA, every non-adapter module holding weights;
    with unfreeze_vision_last_k the frozen ViT keeps its last k layers trainable."""
    parts = chat_parts(model)
    frozen: list[nn.Module] = []
    vision = model.model.vision_tower
    if stage.freeze_vision:
        if stage.lora_vision_rank:
            frozen += without_lora([vision])
        elif stage.unfreeze_vision_last_k:
            frozen += locked_modules(vision.encoder.layer, vision, stage.unfreeze_vision_last_k)
        else:
            frozen += parts["vision"]
    if stage.freeze_mlp:
        frozen += parts["mlp"]
    if stage.freeze_llm:
        frozen += without_lora(parts["llm"]) if stage.lora_llm_rank else parts["llm"]
    return frozen
