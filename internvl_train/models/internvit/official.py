"""Official InternViT weights <-> transformers InternVLVisionModel names (ours), and the one loader of them.

Two official layouts:
  hf   (HF remote code, e.g. OpenGVLab/InternViT-6B-224px): `embeddings.{class_embedding, patch_embedding,
       position_embedding}`, `encoder.layers.N.{norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, ls1, ls2,
       norm2, mlp.fc1, mlp.fc2}` (fused qkv, bare ls1/ls2)
  pth  (original .pth): `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*` with `ls1.gamma`/`ls2.gamma`
Ours: `embeddings.{cls_token, position_embeddings, patch_embeddings.projection}`, `encoder.layer.N.{
layernorm_before, attention.{q_proj,k_proj,v_proj,q_norm,k_norm,projection_layer}, lambda_1, lambda_2,
layernorm_after, mlp.fc1, mlp.fc2}` (split q/k/v).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F

from internvl_train.models.weights import LoadReport, load_checkpoint, meta_like

LAYOUTS = ("hf", "pth")

_EMBEDDINGS = {  # ours -> (hf, pth)
    "embeddings.cls_token": ("embeddings.class_embedding", "cls_token"),
    "embeddings.position_embeddings": ("embeddings.position_embedding", "pos_embed"),
    "embeddings.patch_embeddings.projection": ("embeddings.patch_embedding", "patch_embed.proj"),
}
_LAYER = {  # ours (inside a layer) -> official (inside a block), same in both layouts except ls*
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.q_norm": "attn.q_norm",
    "attention.k_norm": "attn.k_norm",
    "attention.projection_layer": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_OURS_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def detect_layout(state: Mapping[str, torch.Tensor]) -> str | None:
    """'hf', 'pth', 'ours' or None for a bare InternViT state dict (no prefix)."""
    if "embeddings.class_embedding" in state:
        return "hf"
    if "cls_token" in state or "pos_embed" in state:
        return "pth"
    if "embeddings.cls_token" in state:
        return "ours"
    return None


def _block_prefix(layout: str, idx: str) -> str:
    return f"encoder.layers.{idx}." if layout == "hf" else f"blocks.{idx}."


def _ls_name(layout: str, n: str) -> str:
    return f"ls{n}" if layout == "hf" else f"ls{n}.gamma"


def ours_to_official(state: Mapping[str, torch.Tensor], layout: str = "hf") -> dict[str, torch.Tensor]:
    """Our vision state dict -> official layout; q/k/v fused into `attn.qkv` (bias only when present)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown InternViT layout {layout!r}; expected one of {LAYOUTS}")
    out: dict[str, torch.Tensor] = {}
    for ours, names in _EMBEDDINGS.items():
        target = names[LAYOUTS.index(layout)]
        for suffix in ("", ".weight", ".bias"):
            if ours + suffix in state:
                out[target + suffix] = state[ours + suffix]
    for key, value in state.items():
        match = _OURS_LAYER.fullmatch(key)
        if not match:
            continue
        idx, rest = match.groups()
        block = _block_prefix(layout, idx)
        if rest in ("lambda_1", "lambda_2"):
            out[block + _ls_name(layout, rest[-1])] = value
        elif rest.startswith("attention.q_proj."):
            suffix = rest.rsplit(".", 1)[1]
            parts = [state[f"encoder.layer.{idx}.attention.{p}_proj.{suffix}"] for p in "qkv"]
            out[block + f"attn.qkv.{suffix}"] = torch.cat(parts, dim=0)
        elif not rest.startswith(("attention.k_proj.", "attention.v_proj.")):
            module, suffix = rest.rsplit(".", 1)
            out[block + f"{_LAYER[module]}.{suffix}"] = value
    return out


def official_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official InternViT state dict (either layout, no prefix) -> our names; unknown keys are kept as-is so
    the loader reports them as unexpected."""
    layout = detect_layout(state)
    if layout == "ours":
        return dict(state)
    if layout is None:
        raise ValueError("not an InternViT state dict: no class_embedding/cls_token/pos_embed key")
    inverse_embed = {names[LAYOUTS.index(layout)]: ours for ours, names in _EMBEDDINGS.items()}
    inverse_layer = {off: ours for ours, off in _LAYER.items()}
    block_re = re.compile(r"encoder\.layers\.(\d+)\.(.+)" if layout == "hf" else r"blocks\.(\d+)\.(.+)")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, suffix = key.rpartition(".")
        if key in inverse_embed:
            out[inverse_embed[key]] = value
        elif module in inverse_embed:
            out[f"{inverse_embed[module]}.{suffix}"] = value
        elif (match := block_re.fullmatch(key)) is None:
            out[key] = value
        else:
            out.update(_official_block_entry(layout, *match.groups(), value, inverse_layer))
    return out


def _official_block_entry(layout: str, idx: str, rest: str, value: torch.Tensor,
                          inverse_layer: dict[str, str]) -> dict[str, torch.Tensor]:
    ours = f"encoder.layer.{idx}."
    if rest in (_ls_name(layout, "1"), _ls_name(layout, "2")):
        return {ours + f"lambda_{rest[2]}": value}
    module, _, suffix = rest.rpartition(".")
    if module == "attn.qkv":
        q, k, v = value.chunk(3, dim=0)
        return {ours + f"attention.{p}_proj.{suffix}": t for p, t in zip("qkv", (q, k, v))}
    if module in inverse_layer:
        return {ours + f"{inverse_layer[module]}.{suffix}": value}
    return {f"blocks.{idx}.{rest}" if layout == "pth" else f"encoder.layers.{idx}.{rest}": value}


def resize_position_embedding(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """[1, 1 + g*g, C] -> [1, 1 + new_grid**2, C]: bicubic on the patch grid in fp32, align_corners=False,
    CLS slot unchanged (as the official InternViT resize)."""
    cls, grid = pos[:, :1], pos[:, 1:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding of {grid.shape[1]} patches is not a square grid")
    if old == new_grid:
        return pos
    grid = grid.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=1)


POSITION_KEY = "embeddings.position_embeddings"
_WRAPPER_PREFIX = "vision_model."  # InternVL checkpoints (14B, chat) nest the ViT under it
_PROJECTOR_PREFIX = "clip_projector."  # InternViT-6B-224px ships its CLIP projector in the same file


def resize_positions_to(state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], key: str) -> str | None:
    """Resize `state[key]` in place to the grid of `own[key]` (a checkpoint trained at another resolution);
    return a line for the load report, or None when nothing changed."""
    if key not in state or key not in own or state[key].shape == own[key].shape:
        return None
    grid = int(round((own[key].shape[1] - 1) ** 0.5))
    before = tuple(state[key].shape)
    state[key] = resize_position_embedding(state[key], grid)
    return f"{key} {before} -> {tuple(state[key].shape)}"


def load_official_internvit(tower: torch.nn.Module, path: str) -> tuple[LoadReport, dict[str, torch.Tensor]]:
    """Official InternViT weights (HF layout, .pth naming or ours; `vision_model.`-prefixed or not) into a
    bare InternVLVisionModel, position embeddings resized to the tower's grid. Heads of other tasks (e.g. a
    classifier) are reported unused; a surplus ViT layer is an error. Returns the load report and the
    `clip_projector.*` tensors the file carried (prefix stripped) for the caller that has a projector."""
    own, resized, projector = meta_like(tower, [POSITION_KEY]), [], {}

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # per shard (weights.load_checkpoint)
        if any(k.startswith(_WRAPPER_PREFIX) for k in state):
            state = {k[len(_WRAPPER_PREFIX):]: v for k, v in state.items() if k.startswith(_WRAPPER_PREFIX)}
        projector.update({k[len(_PROJECTOR_PREFIX):]: v for k, v in state.items()
                          if k.startswith(_PROJECTOR_PREFIX) and not v.is_meta})  # small: kept for the caller
        vision = official_to_ours({k: v for k, v in state.items() if not k.startswith(_PROJECTOR_PREFIX)})
        note = resize_positions_to(vision, own, POSITION_KEY)
        if note and note not in resized:
            resized.append(note)
        return vision

    report = load_checkpoint(tower, path, convert, unused_ok=(r"(?!embeddings\.|encoder\.).*",))
    report.resized = resized
    return report, projector
