"""The recipe's model on the meta device (shapes, no memory, no weights read) with the stage's own freeze policy.

Sizes come from the config (`model.*`), never from `init_from` weights; a tokenizer or a previous stage's export
is read only where the run would take a size from it (the text vocabulary, the demo LLM) and only if it exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from internvl_train.engine.freeze import freeze_modules
from internvl_train.errors import ConfigError
from internvl_train.models.config import ModelConfig, as_model_config
from internvl_train.models.tokenizer import first_tokenizer_dir, load_local_tokenizer
from internvl_train.stages import get_stage_class
from internvl_train.engine.stage_api import DistInfo, Stage

DEMO_TEXT_VOCAB = 1024  # data_pipelines.demo.tokenizer.VOCAB_SIZE: the demo tokenizer's target size


@dataclass
class PartCount:
    name: str
    total: int = 0
    trainable: int = 0

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


@dataclass
class PlannedModel:
    """A meta-device model whose requires_grad flags are the run's, with each parameter assigned to a part."""

    model: nn.Module
    kind: str  # internvl_c | internvl_g | chat
    part_of: Callable[[str, nn.Parameter], str]  # (parameter name, parameter) -> part label
    notes: list[str] = field(default_factory=list)

    def parts(self) -> list[PartCount]:
        counts: dict[str, PartCount] = {}
        for name, param in self.model.named_parameters():  # shared (tied) parameters appear once
            part = counts.setdefault(self.part_of(name, param), PartCount(self.part_of(name, param)))
            part.total += param.numel()
            part.trainable += param.numel() if param.requires_grad else 0
        return list(counts.values())

    @property
    def total(self) -> int:
        return sum(p.total for p in self.parts())

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts())


def policy_stage(cfg: Any) -> Stage:
    """The stage object, for its freeze policy only: made without __init__, which loads tokenizers and checks
    that weights exist; frozen_modules reads nothing but cfg."""
    stage_cls = get_stage_class(cfg.stage.name)
    stage = stage_cls.__new__(stage_cls)
    Stage.__init__(stage, cfg, DistInfo())
    return stage


def build_planned_model(cfg: Any) -> PlannedModel:
    """The model `cfg.stage` would build, on the meta device, frozen as the engine freezes it."""
    builders = {"contrastive": _internvl_c, "generative": _internvl_g, "sft": _chat}
    notes: list[str] = []
    with torch.device("meta"):
        planned = builders[cfg.stage.name](cfg, notes)
        freeze_modules(policy_stage(cfg).frozen_modules(planned.model))
    planned.notes += notes
    return planned


# ---- stages 1 and 2 ------------------------------------------------------------------------------------------
def _internvl_c(cfg: Any, notes: list[str]) -> PlannedModel:
    from internvl_train.models.internvl_c.modeling import InternVLC

    return PlannedModel(InternVLC(cfg.model, text_vocab_size(cfg, notes)), "internvl_c", _clip_part)


def _internvl_g(cfg: Any, notes: list[str]) -> PlannedModel:
    """As GenerativeStage.build_model: InternVL-G, its frozen bare parameters, LoRA when configured."""
    from internvl_train.models.internvl_g.modeling import InternVLG
    from internvl_train.stages.generative_lora import add_qllama_lora

    model = InternVLG(cfg.model, text_vocab_size(cfg, notes))
    for param in model.stage2_frozen_parameters():
        param.requires_grad_(False)
    if cfg.stage.lora_rank:
        add_qllama_lora(model, cfg.stage.lora_rank, cfg.stage.lora_alpha)
    return PlannedModel(model, "internvl_g", _clip_part)


def _clip_part(name: str, param: nn.Parameter) -> str:
    if name.startswith("vision."):
        return "ViT"
    if name.startswith("text."):
        return "QLLaMA cross-attn" if ".cross_attn." in name else "text tower (LLaMA)"
    return "queries" if name == "query_tokens" else "heads"


def text_vocab_size(cfg: Any, notes: list[str]) -> int:
    """model.text.vocab_size, else the length of the tokenizer the stage would load (if its files exist), else
    the demo tokenizer's size."""
    if cfg.model.text.vocab_size:
        return int(cfg.model.text.vocab_size)
    from internvl_train.stages.config import generative_init_from, tokenizer_source

    init_from = generative_init_from(cfg) if cfg.stage.name == "generative" else cfg.init_from
    try:
        path = tokenizer_source(cfg, init_from) or _cached_demo_tokenizer()
    except ConfigError:
        path = None
    if path:
        return len(load_local_tokenizer(path))
    notes.append(f"text vocabulary: model.text.vocab_size is null and no tokenizer found; assumed {DEMO_TEXT_VOCAB}")
    return DEMO_TEXT_VOCAB


def _cached_demo_tokenizer() -> Optional[str]:
    """The demo tokenizer if the demo data was generated already (the planner never generates it)."""
    from data_pipelines.demo import GENERATOR_VERSION, default_cache_dir, demo_paths

    path = demo_paths(os.path.join(default_cache_dir(), f"demo-v{GENERATOR_VERSION}")).tokenizer_dir
    return path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else None


# ---- stage 3 -------------------------------------------------------------------------------------------------
def _chat(cfg: Any, notes: list[str]) -> PlannedModel:
    """As SftStage.build_model for a new chat model: build_chat_model from a meta ViT and a meta LLM, LoRA."""
    from internvl_train.models.chat.modeling import build_chat_model, chat_parts
    from internvl_train.models.internvit.modeling import build_vision_tower
    from internvl_train.stages.sft_model import add_lora_adapters

    mcfg = as_model_config(cfg.model)
    export = _text_tower_export(cfg) if mcfg.chat.llm_from_text_tower else None
    tokenizer = _chat_tokenizer(cfg, mcfg, export, notes)
    llm = _meta_llm(mcfg, export, tokenizer, notes)
    model_g = _meta_model_g(mcfg, len(tokenizer)) if mcfg.chat.bridge == "mlp+qllama" else None
    model = build_chat_model(mcfg.chat, build_vision_tower(mcfg.vision), tokenizer=tokenizer, model_g=model_g,
                             llm=llm).model
    add_lora_adapters(model, cfg.stage)
    owner = {id(p): part for part, modules in chat_parts(model).items() for m in modules for p in m.parameters()}
    labels = {"vision": "ViT", "mlp": "bridge (mlp1)", "llm": "LLM", "qllama": "QLLaMA bridge"}
    return PlannedModel(model, "chat", lambda name, p: labels.get(owner.get(id(p), ""), "other"))


def _text_tower_export(cfg: Any) -> Optional[str]:
    """The stage-1/2 export whose text tower becomes the LLM (model.chat.llm_from_text_tower), if one exists."""
    from internvl_train.models.weights import is_our_checkpoint

    candidates = [cfg.init_from] if cfg.init_from else list(cfg.stage.previous_exports)
    return next((p for p in candidates if p and is_our_checkpoint(p)), None)


def _chat_tokenizer(cfg: Any, mcfg: ModelConfig, export: Optional[str], notes: list[str]) -> Any:
    """The run's tokenizer where its files exist (chat.llm_path, the text-tower export, model.text.tokenizer,
    the cached demo tokenizer), else a small stand-in: the special tokens are then assumed to fit the LLM's
    vocabulary (model.chat.llm.vocab_size)."""
    from internvl_train.stages.sft_model import sft_tokenizer_candidates

    candidates = sft_tokenizer_candidates(cfg, cfg.init_from, export)
    if cfg.data.demo or cfg.data.sft.demo:
        candidates.append(_cached_demo_tokenizer())
    path = first_tokenizer_dir(candidates)
    if path is not None:
        return load_local_tokenizer(path)
    from internvl_train.plan.standin_tokenizer import build_tiny_tokenizer

    notes.append("tokenizer: none found; the chat special tokens are assumed to fit the LLM vocabulary")
    return build_tiny_tokenizer()


def _meta_llm(mcfg: ModelConfig, export: Optional[str], tokenizer: Any, notes: list[str]) -> nn.Module:
    """The LLM's architecture: chat.llm_path's config.json, the text-tower export's text config, else the
    inline model.chat.llm."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from internvl_train.models.chat.llm import make_llm_config, text_tower_as_llm

    chat = mcfg.chat
    if chat.llm_path and os.path.isfile(os.path.join(chat.llm_path, "config.json")):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(chat.llm_path),
                                                attn_implementation=chat.attn_implementation)
    if export is not None:
        from internvl_train.models.weights import read_our_config
        from internvl_train.models.internvl_c.text_tower import build_text_tower

        text = read_our_config(export)[1].text
        max_positions = chat.llm.max_position_embeddings if chat.llm is not None else None
        return text_tower_as_llm(build_text_tower(text, text.vocab_size), max_positions)
    if chat.llm is None:
        raise ValueError("model.chat: no llm_path config.json, no text-tower export and no inline model.chat.llm: "
                         "the planner cannot size the LLM")
    if chat.llm_from_text_tower:
        notes.append("LLM: no stage-1/2 export found for model.chat.llm_from_text_tower; sized from model.chat.llm")
    return AutoModelForCausalLM.from_config(make_llm_config(chat.llm, len(tokenizer), chat.attn_implementation))


def _meta_model_g(mcfg: ModelConfig, vocab_size: int) -> nn.Module:
    from internvl_train.models.internvl_g.modeling import InternVLG

    return InternVLG(mcfg, mcfg.text.vocab_size or vocab_size)
