"""The chat model's LLM side: loading a local causal LM or building one from an inline config, and growing its
embeddings for the image tokens (tokens.py)."""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from internvl_train.models.chat.configuration import ChatConfig, ChatLLMConfig
from internvl_train.models.config import transformers_shape
from internvl_train.models.tokenizer import load_local_tokenizer

log = logging.getLogger(__name__)


def load_tokenizer(cfg: ChatConfig) -> Any:
    """model.chat.llm_path's tokenizer (an inline LLM has none: the caller passes one)."""
    if cfg.llm_path is None:
        raise ValueError("model.chat.llm_path is not set: pass a tokenizer to build_chat_model for an inline LLM")
    _require_local_dir(cfg.llm_path)
    return load_local_tokenizer(cfg.llm_path)


def make_llm_config(arch: ChatLLMConfig, vocab_size: int, attn_implementation: str) -> PretrainedConfig:
    """A transformers config (LlamaConfig / Qwen2Config) from the inline architecture."""
    return AutoConfig.for_model(
        arch.model_type,
        **transformers_shape(arch),
        num_key_value_heads=arch.num_kv_heads or arch.num_heads,
        vocab_size=arch.vocab_size or vocab_size,
        max_position_embeddings=arch.max_position_embeddings,
        rope_theta=arch.rope_theta,
        rms_norm_eps=arch.rms_norm_eps,
        tie_word_embeddings=arch.tie_word_embeddings,
        attn_implementation=attn_implementation,
    )


def load_or_build_llm(cfg: ChatConfig, vocab_size: int, dtype: Optional[torch.dtype]) -> PreTrainedModel:
    """The causal LM: from the local directory cfg.llm_path (safetensors preferred, no remote code) or fresh."""
    if cfg.llm_path is not None:
        _require_local_dir(cfg.llm_path)
        log.info("loading LLM weights from %s", cfg.llm_path)
        return AutoModelForCausalLM.from_pretrained(
            cfg.llm_path, trust_remote_code=False, attn_implementation=cfg.attn_implementation, dtype=dtype)
    assert cfg.llm is not None  # ChatConfig.validate guarantees llm_path or llm
    llm = AutoModelForCausalLM.from_config(
        make_llm_config(cfg.llm, vocab_size, cfg.attn_implementation), trust_remote_code=False, dtype=dtype)
    log.info("new: LLM built from the inline config (%s, %d layers, width %d), randomly initialised",
             cfg.llm.model_type, cfg.llm.num_layers, cfg.llm.hidden_size)
    return llm


def text_tower_as_llm(text_tower: PreTrainedModel, max_position_embeddings: Optional[int] = None) -> PreTrainedModel:
    """A stage-1/2 text tower (LlamaForCausalLM, or QLLaMA) as a plain LlamaForCausalLM with the same weights;
    QLLaMA's cross-attention (it reads the ViT through learnable queries, which the chat model has not) is
    left out. `max_position_embeddings` raises the tower's (caption-length) limit to the chat sequences'."""
    from transformers import LlamaForCausalLM

    config = text_tower.config.__class__.from_dict(text_tower.config.to_dict())
    config.architectures = ["LlamaForCausalLM"]
    if max_position_embeddings:
        config.max_position_embeddings = max(config.max_position_embeddings, max_position_embeddings)
    llm = LlamaForCausalLM(config).to(next(text_tower.parameters()).dtype)
    state = {k: v for k, v in text_tower.state_dict().items() if ".cross_attn." not in k}
    llm.load_state_dict(state, strict=True)
    return llm


@torch.no_grad()
def grow_embeddings(llm: PreTrainedModel, vocab_size: int) -> int:
    """Resize input/output embeddings to vocab_size; new rows start at the mean of the old ones (as official).

    Returns the number of new rows (0 when the vocabulary is already large enough)."""
    old = llm.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return 0
    llm.resize_token_embeddings(vocab_size, mean_resizing=False)
    for emb in {id(m): m for m in (llm.get_input_embeddings(), llm.get_output_embeddings()) if m is not None}.values():
        emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    return vocab_size - old


def _require_local_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model.chat.llm_path={path!r} is not a local directory: download the HF model first "
            "(nothing is fetched at run time)")
