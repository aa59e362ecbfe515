"""Official InternVL-14B (InternVL-C/G, HF remote-code layout) <-> our InternVLC / InternVLG names.

Official: `vision_model.*` (InternViT, hf layout), `qllama.{model.*, lm_head.weight}` (with
`model.layers.N.cross_attn.*`), `query_tokens`, `text_projection`, `logit_scale`, `clip_projector.*`,
`clip_projector2.*`, `itm_head.*`. Ours: `vision.*` (transformers names), `text.*`; heads identical.
"""
from __future__ import annotations

from typing import Mapping

import torch

from internvl_train.models.internvit import official as official_vit

VISION_OFFICIAL, TEXT_OFFICIAL = "vision_model.", "qllama."
VISION_OURS, TEXT_OURS = "vision.", "text."
LOGIT_SCALE = "logit_scale"
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # non-persistent RoPE buffers saved by old LLaMA code


def is_internvl14b(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(VISION_OFFICIAL) for k in state) and any(k.startswith(TEXT_OFFICIAL) for k in state)


def _split(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def official_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {VISION_OURS + k: v for k, v in official_vit.official_to_ours(_split(state, VISION_OFFICIAL)).items()}
    out.update({TEXT_OURS + k: v for k, v in _split(state, TEXT_OFFICIAL).items()
                if not k.endswith(IGNORED_SUFFIXES)})
    out.update({k: v for k, v in state.items() if not k.startswith((VISION_OFFICIAL, TEXT_OFFICIAL))})
    if LOGIT_SCALE in out:
        out[LOGIT_SCALE] = out[LOGIT_SCALE].reshape(1)  # ours is [1] (ZeRO-3 cannot partition 0-dim)
    return out


def ours_to_official(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    vision = official_vit.ours_to_official(_split(state, VISION_OURS), layout="hf")
    out = {VISION_OFFICIAL + k: v for k, v in vision.items()}
    out.update({TEXT_OFFICIAL + k: v for k, v in _split(state, TEXT_OURS).items()})
    out.update({k: v for k, v in state.items() if not k.startswith((VISION_OURS, TEXT_OURS))})
    if LOGIT_SCALE in out:
        out[LOGIT_SCALE] = out[LOGIT_SCALE].reshape(())  # official: a 0-dim scalar
    return out
