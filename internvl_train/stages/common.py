"""Helpers shared by the stages: tokenizer resolution, batch placement, stable sample ids."""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Mapping, Optional

import torch
from torch import nn

from internvl_train.models.tokenizer import load_local_tokenizer
from internvl_train.stages.config import tokenizer_source

log = logging.getLogger(__name__)


def load_tokenizer(cfg: Any) -> Any:
    """The stage-1/2 tokenizer from `tokenizer_source` (the demo's when that says None)."""
    path = tokenizer_source(cfg, cfg.init_from)
    if path is None:
        from data_pipelines.demo import ensure_demo_data

        path = ensure_demo_data().tokenizer_dir
    return load_local_tokenizer(path)


def prefix_token_ids(tokenizer: Any, prefix: str) -> torch.Tensor:
    """The ids a caption prefix starts every tokenised caption with (BOS included, no EOS)."""
    ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    if ids and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return torch.tensor(ids, dtype=torch.long)


def check_prefix_tokens(input_ids: torch.Tensor, prefix_ids: torch.Tensor, key: str, prefix: str) -> None:
    """Label masks count the prefix by its tokens alone: a prefix that merges with the caption's first token
    would shift them silently, so it is rejected naming the config key."""
    if not bool((input_ids[:, : prefix_ids.numel()] == prefix_ids.to(input_ids.device)).all()):
        raise ValueError(f"{key}={prefix!r} does not tokenise the same alone and before a caption with this "
                         "tokenizer: end the prefix with a separator (e.g. ':' or ' ')")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The compute dtype: DeepSpeed bf16 casts the module, so inputs must follow it."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def to_device(batch: Mapping[str, Any], device: torch.device | str, dtype: Optional[torch.dtype] = None) -> dict:
    """Tensors to `device`; floating tensors (images) also to `dtype`; everything else unchanged."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def stable_ids(keys: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """An int64 id per sample key, equal on every rank (Python's hash() is salted per process)."""
    ids = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=7).digest(), "big") for k in keys]
    return torch.tensor(ids, dtype=torch.long, device=device)
