"""Stage-3 conversation data: InternVL-Chat / LLaVA sources, templates, packing, a resumable loader.

Names are resolved lazily so that `data_pipelines.sft.config` (imported by the config schema) stays free
of torch."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_sft_loader": "build", "SftDataConfig": "config", "SftLoader": "loader",
    "ConversationEncoder": "encode", "EncodedSample": "encode", "EncoderSettings": "encode",
    "block_causal_mask": "packing", "collate_rows": "packing",
    "cu_seqlens_from_sample_ids": "packing", "read_vqa_jsonl": "source",
    "resolve_heldout_vqa": "build",
    "TEMPLATES": "templates", "TEMPLATE_NAMES": "templates",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_pipelines.sft' has no attribute {name!r}")
    return getattr(importlib.import_module(f"data_pipelines.sft.{_EXPORTS[name]}"), name)
