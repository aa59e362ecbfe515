"""Build InternVL-C, and load InternVL-C / G weights from wherever the config points (internvl_g/build.py
builds G with the same loader).

Weight source, first that is set: `init_from` (our export of a previous stage, or an official InternVL-14B
directory), `model.pretrained` (same kinds), else the towers separately: `model.vision.pretrained` (official
InternViT, HF layout or .pth) and `model.text.pretrained` (HF LLaMA directory). Building G from a C
checkpoint creates only NEW_IN_G and says so; a G checkpoint (any NEW_IN_G tensor in it) must be complete;
building C from a G checkpoint leaves the G parts unused.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from internvl_train.models.internvit import official as official_vit
from internvl_train.models.internvl_g import official as internvl14b
from internvl_train.models.weights import LoadReport, load_checkpoint, load_state_into, meta_like
from internvl_train.models.internvl_c.modeling import InternVLC
from internvl_train.models.internvl_g.modeling import NEW_IN_G, InternVLG

log = logging.getLogger(__name__)

OFFICIAL_LAYOUTS = ("internvl14b", "internvit-hf", "internvit-pth")


def build_internvl_c(cfg: Any, vocab_size: Optional[int] = None, init_from: Optional[str] = None) -> InternVLC:
    model = InternVLC(cfg, vocab_size)
    load_configured_weights(model, init_from)
    return model


def load_configured_weights(model: InternVLC, init_from: Optional[str]) -> None:
    cfg = model.config
    whole = init_from or cfg.pretrained
    if whole:
        report = load_model_weights(model, whole)
        log.info("weights from %s: %s", whole, report.summary())
        return
    if cfg.vision.pretrained:
        log.info("vision tower from %s: %s", cfg.vision.pretrained,
                 load_vision_weights(model, cfg.vision.pretrained).summary())
    if cfg.text.pretrained:
        log.info("text tower from %s: %s", cfg.text.pretrained,
                 load_text_weights(model, cfg.text.pretrained).summary())
    if not (cfg.vision.pretrained or cfg.text.pretrained):
        log.info("no pretrained weights configured: %s is randomly initialised", type(model).__name__)


def load_model_weights(model: InternVLC, path: str | Path) -> LoadReport:
    """Whole-model weights: our save_pretrained directory or an official InternVL-14B checkpoint.

    Only what the stage really creates may be missing: an InternVL-G built from an InternVL-C source (no
    NEW_IN_G tensor at all) creates NEW_IN_G; a source holding any NEW_IN_G tensor is an InternVL-G
    checkpoint (official InternVL-14B, our stage-2 export) and must hold every tensor of the model."""
    key = "vision." + official_vit.POSITION_KEY
    own, resized = meta_like(model, [key]), []

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # per shard (weights.load_checkpoint)
        if internvl14b.is_internvl14b(state):
            state = internvl14b.official_to_ours(state)
        note = official_vit.resize_positions_to(state, own, key)
        if note and note not in resized:
            resized.append(note)
        return state

    report = load_checkpoint(model, path, convert, rules=lambda state: _missing_key_rules(model, state, path))
    report.resized = resized
    return report


def g_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of `state` that only an InternVL-G has (NEW_IN_G)."""
    return [k for k in state if any(re.fullmatch(p, k) for p in NEW_IN_G)]


def _missing_key_rules(model: InternVLC, state: Mapping[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """load_state_into's new_ok / unused_ok / hint for loading `state` (read from `path`) into `model`."""
    if not isinstance(model, InternVLG):
        return {"unused_ok": NEW_IN_G}  # InternVL-C from a G checkpoint: the G parts stay unused
    carried = g_tensors(state)
    if not carried:
        return {"new_ok": NEW_IN_G}  # stage 2 from stage 1: the G parts are created here
    examples = ", ".join(carried[:3]) + (", ..." if len(carried) > 3 else "")
    return {"hint": f"{path} holds InternVL-G tensors ({examples}), so it is an InternVL-G "
                    "checkpoint and every tensor must be in it: nothing is created. Use the complete checkpoint "
                    "(all shards; model.* sizes and qllama.* matching it), or init_from an InternVL-C (stage-1) "
                    "export to create the stage-2 parts fresh."}


def load_vision_weights(model: InternVLC, path: str | Path) -> LoadReport:
    """Official InternViT weights into `model.vision`; a `clip_projector.*` in the file goes to
    `model.clip_projector`."""
    report, projector = official_vit.load_official_internvit(model.vision, str(path))
    if projector:
        report.loaded += load_state_into(model.clip_projector, projector).loaded
    return report


def load_text_weights(model: InternVLC, path: str | Path) -> LoadReport:
    """A local HF LLaMA directory into `model.text` (cross-attention is created when `model` is G)."""
    new_ok = (r"model\.layers\.\d+\.cross_attn\..*",) if isinstance(model, InternVLG) else ()
    return load_checkpoint(model.text, path, lambda state: {k: v for k, v in state.items()
                                                             if not k.endswith(internvl14b.IGNORED_SUFFIXES)},
                           new_ok=new_ok)


def official_state_dict(model: InternVLC, layout: str) -> dict[str, torch.Tensor]:
    """Our weights in an official layout: internvl14b (whole model), internvit-hf or internvit-pth (ViT)."""
    if layout == "internvl14b":
        return internvl14b.ours_to_official(model.state_dict())
    if layout in ("internvit-hf", "internvit-pth"):
        return official_vit.ours_to_official(model.vision.state_dict(), layout=layout.split("-")[1])
    raise ValueError(f"unknown official layout {layout!r}; expected one of {OFFICIAL_LAYOUTS}")


def export_official(model: InternVLC, out_dir: str | Path, layout: str = "internvl14b") -> Path:
    """Write official-layout weights (safetensors, or a single .pth for internvit-pth)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in official_state_dict(model, layout).items()}
    if layout == "internvit-pth":
        torch.save(state, out / "internvit.pth")
    else:
        from huggingface_hub import save_torch_state_dict

        save_torch_state_dict(state, out)
    return out

