"""The LLaMA text tower (transformers LlamaForCausalLM, LM head kept for stage 2's ITG) and caption inputs."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from internvl_train.models.config import transformers_shape
from internvl_train.models.internvl_c.configuration import TextTowerConfig
from internvl_train.models.zero3 import construct_hf


def llama_config(cfg: TextTowerConfig, vocab_size: Optional[int] = None) -> LlamaConfig:
    """Our TextTowerConfig -> a fresh transformers LlamaConfig; `vocab_size` overrides a null config value."""
    vocab = vocab_size or cfg.vocab_size
    if vocab is None:
        raise ValueError("model.text.vocab_size is null and no tokenizer vocabulary size was given; set "
                         "model.text.vocab_size or build the model with vocab_size=len(tokenizer)")
    return LlamaConfig(
        **transformers_shape(cfg),
        num_key_value_heads=cfg.kv_heads,
        vocab_size=vocab,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        pad_token_id=cfg.pad_token_id,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=cfg.attn_implementation,
    )


def build_text_tower(cfg: TextTowerConfig, vocab_size: Optional[int] = None) -> LlamaForCausalLM:
    model = construct_hf(lambda: LlamaForCausalLM(llama_config(cfg, vocab_size)))
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row (works for right and left padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def gather_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [B, T, D] -> [B, D] at each row's last non-pad token (the appended EOS)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def prepare_caption_inputs(tokenizer: Any, captions: Sequence[str], prefix: str = "summarize:",
                           max_length: int = 80, pad_to_max_length: bool = False) -> dict[str, torch.Tensor]:
    """Tokenise `prefix + caption` as InternVL-C does: BOS (if the tokenizer adds one), truncation so the
    appended EOS always fits in `max_length`, right padding with the tokenizer's pad id (0 when it has
    none, as the official code), and an explicit attention mask (never inferred from `id > 0`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id; caption embeddings are read at the EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    for caption in captions:
        ids = tokenizer(prefix + caption, add_special_tokens=True)["input_ids"]
        if ids and ids[-1] == eos:
            ids = ids[:-1]  # tokenizers configured to add EOS already: keep exactly one
        rows.append(list(ids[: max_length - 1]) + [eos])
    width = max_length if pad_to_max_length else max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
