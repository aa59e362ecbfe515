"""The stage-3 model from the run config: where the ViT (and QLLaMA) come from, then build_chat_model.

`init_from`, first match:
  a chat checkpoint (config.json model_type internvl | internvl_chat): continue from it, tokenizer included;
  our stage-1/2 export (internvl_train_model.json): its ViT, and its QLLaMA for bridge=mlp+qllama;
otherwise `model.vision.pretrained` (official InternViT, HF layout or .pth), else a fresh ViT.
With `model.chat.llm_from_text_tower` the LLM is the text tower of `text_tower_from` (a stage-1/2 export).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from torch import nn

from internvl_train.models import weights
from internvl_train.models.internvit import official as official_vit
from internvl_train.models.chat.modeling import ChatBuild, build_chat_model
from internvl_train.models.chat.official import load_chat_model
from internvl_train.models.chat.llm import text_tower_as_llm
from internvl_train.models.chat.tokens import add_chat_special_tokens, image_context_token_id
from internvl_train.models.config import ModelConfig, as_model_config
from internvl_train.models.internvl_g.modeling import InternVLG
from internvl_train.models.internvit.modeling import build_vision_tower
from internvl_train.models.tokenizer import load_local_tokenizer

log = logging.getLogger(__name__)

CHAT_MODEL_TYPES = ("internvl", "internvl_chat")


def is_chat_checkpoint(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") in CHAT_MODEL_TYPES


def build_chat_from_config(model_cfg: Any, init_from: Optional[str] = None, tokenizer: Any = None,
                           text_tower_from: Optional[str] = None) -> ChatBuild:
    """ChatBuild for stage 3 from a ModelConfig (or its OmegaConf node) with `chat` set. `text_tower_from`:
    the stage-1/2 export whose text tower becomes the LLM (needed exactly with chat.llm_from_text_tower)."""
    cfg: ModelConfig = as_model_config(model_cfg)
    if cfg.chat is None:
        raise ValueError("model.chat is not set: pick a chat model preset, e.g. model=chat_tiny")
    if init_from and is_chat_checkpoint(init_from):
        return _continue_chat(init_from, tokenizer, cfg.chat.gradient_checkpointing)
    if cfg.chat.llm_from_text_tower != (text_tower_from is not None):
        raise ValueError("model.chat.llm_from_text_tower: pass text_tower_from (a stage-1/2 export) exactly when it "
                         "is true")
    model_g: Optional[nn.Module] = None
    previous: Optional[nn.Module] = None
    if init_from and weights.is_our_checkpoint(init_from):
        previous = weights.from_pretrained(init_from)
        tower = previous.vision
        model_g = previous if isinstance(previous, InternVLG) else None
        log.info("chat ViT%s from the stage export %s", " and QLLaMA" if model_g else "", init_from)
    elif init_from:
        raise FileNotFoundError(f"init_from={init_from!r} is neither a chat checkpoint nor a stage-1/2 export")
    else:
        tower = build_vision_tower(cfg.vision)
        if cfg.vision.pretrained:
            load_official_vision(tower, cfg.vision.pretrained)
    if cfg.chat.bridge == "mlp+qllama" and model_g is None:
        raise ValueError("model.chat.bridge=mlp+qllama needs init_from=<stage-2 (generative) export> for QLLaMA")
    llm = _text_tower_llm(cfg, text_tower_from, previous if text_tower_from == init_from else None)
    return build_chat_model(cfg.chat, vision_tower=tower, tokenizer=tokenizer,
                            model_g=model_g if cfg.chat.bridge == "mlp+qllama" else None, llm=llm)


def _text_tower_llm(cfg: ModelConfig, export: Optional[str], loaded: Optional[nn.Module]) -> Optional[nn.Module]:
    """The LLM taken from a stage-1/2 export's text tower (`loaded`: that export, when already in memory)."""
    if export is None:
        return None
    if loaded is None:
        if not weights.is_our_checkpoint(export):
            raise FileNotFoundError(f"{export!r} is not a stage-1/2 export: model.chat.llm_from_text_tower takes the "
                                    "LLM from one (run stage 1 first, or set model.chat.llm_from_text_tower=false)")
        loaded = weights.from_pretrained(export)
    max_positions = cfg.chat.llm.max_position_embeddings if cfg.chat.llm is not None else None
    llm = text_tower_as_llm(loaded.text, max_positions)
    log.info("chat LLM from the text tower of %s (%d layers, width %d)", export, llm.config.num_hidden_layers,
             llm.config.hidden_size)
    return llm


def load_official_vision(tower: nn.Module, path: str) -> None:
    """Official InternViT weights into the chat model's bare tower (a CLIP projector in the file is unused)."""
    report, _ = official_vit.load_official_internvit(tower, path)
    log.info("chat ViT from %s: %s", path, report.summary())


def _continue_chat(path: str, tokenizer: Any, gradient_checkpointing: bool) -> ChatBuild:
    """Continue from a chat checkpoint: its own config (ps_version, sizes) wins over model.chat."""
    tokenizer = tokenizer if tokenizer is not None else load_local_tokenizer(path)
    new_tokens = add_chat_special_tokens(tokenizer)
    if new_tokens:
        raise ValueError(f"{path}: the tokenizer lacks {new_tokens}; give the tokenizer the chat model was "
                         "trained with")
    model, _ = load_chat_model(path, image_context_token_id(tokenizer))
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    log.info("chat model continued from %s (all %d tensors loaded)", path, len(model.state_dict()))
    return ChatBuild(model=model.train(), tokenizer=tokenizer, new_parameters=[])
