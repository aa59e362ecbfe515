"""Chat checkpoints: official InternVL-Chat layout <-> transformers' native InternVL layout, loading and export.

Official keys: `vision_model.*` (InternViT remote-code naming, fused qkv), `mlp1.{0,1,3}.*`,
`language_model.*` (a HF causal LM: `language_model.model.*`, `language_model.lm_head.*`).
Native keys: `model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`.
Reading (safetensors first, torch.load(weights_only=True)) and the InternViT key map are models/weights.py's
and models/internvit/official.py's; this module adds the chat prefixes, config and loading. No remote code.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import InternVLConfig, InternVLVisionConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from internvl_train.models.chat.modeling import InternVLChatModel
from internvl_train.models.internvit import official as official_vit
from internvl_train.models.chat.tokens import IMG_CONTEXT_TOKEN
from internvl_train.models.tokenizer import load_local_tokenizer
from internvl_train.models.weights import read_state_dict

log = logging.getLogger(__name__)

_PROJECTOR = (("mlp1.0.", "model.multi_modal_projector.layer_norm."),
              ("mlp1.1.", "model.multi_modal_projector.linear_1."),
              ("mlp1.3.", "model.multi_modal_projector.linear_2."))
_LLM = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."))
_BRIDGE = (("query_bridge.", "model.query_bridge."),)  # our extension of the official layout
_VISION_OFFICIAL, _VISION_NATIVE = "vision_model.", "model.vision_tower."
_LLM_RUNTIME_KEYS = ("attn_implementation", "_attn_implementation", "_name_or_path", "auto_map", "torch_dtype",
                     "dtype", "use_cache", "transformers_version")


@dataclass
class ChatLoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def raise_if_incomplete(self, source: str) -> None:
        if self.missing or self.unexpected:
            raise ValueError(f"{source}: its weights do not fit the model its config.json describes: missing keys "
                             f"{self.missing[:8]} ({len(self.missing)}), unexpected keys {self.unexpected[:8]} "
                             f"({len(self.unexpected)}) (names after conversion to transformers' InternVL layout). "
                             "Give a complete InternVL-Chat checkpoint (every weight shard) whose config.json "
                             "matches its weights.")


def _swap_prefix(key: str, pairs: tuple, forward: bool) -> Optional[str]:
    for official, native in pairs:
        src, dst = (official, native) if forward else (native, official)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def _convert_chat_keys(state: dict[str, torch.Tensor], forward: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official -> native keys (forward) or back; returns (converted, unrecognised keys). Vision keys go through
    the InternViT key map (its unknown keys are kept as they are), the rest through the prefix table."""
    vision_from, vision_to = (_VISION_OFFICIAL, _VISION_NATIVE) if forward else (_VISION_NATIVE, _VISION_OFFICIAL)
    vision = {k[len(vision_from):]: v for k, v in state.items() if k.startswith(vision_from)}
    vision = official_vit.official_to_ours(vision) if forward else official_vit.ours_to_official(vision, layout="hf")
    out = {vision_to + k: v for k, v in vision.items()}
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(vision_from):
            continue
        new = _swap_prefix(key, _PROJECTOR + _LLM + _BRIDGE, forward=forward)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


def official_chat_to_native(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official InternVL-Chat keys -> native keys; returns (converted, unrecognised keys)."""
    return _convert_chat_keys(state, forward=True)


def native_chat_to_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Native keys -> official InternVL-Chat keys; returns (converted, unrecognised keys)."""
    return _convert_chat_keys(state, forward=False)


def vision_config_from_official(vc: dict) -> InternVLVisionConfig:
    return InternVLVisionConfig(
        hidden_size=vc["hidden_size"], num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"], intermediate_size=vc["intermediate_size"],
        image_size=vc.get("image_size", 448), patch_size=vc.get("patch_size", 14),
        norm_type=vc.get("norm_type", "rms_norm"), layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        use_qk_norm=vc.get("qk_normalization", False), attention_bias=vc.get("qkv_bias", False),
        hidden_act=vc.get("hidden_act", "gelu"), use_mean_pooling=True, num_channels=vc.get("num_channels", 3))


def chat_config_from_official(official: dict, attn_implementation: str = "sdpa") -> InternVLConfig:
    """transformers InternVLConfig from an official InternVL-Chat config.json (ps_version defaults to v1)."""
    # Runtime choices saved by the official configs (e.g. flash_attention_2) are not architecture.
    llm = {k: v for k, v in official["llm_config"].items() if k not in _LLM_RUNTIME_KEYS}
    model_type = llm.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"llm_config.model_type={model_type!r} ({llm.get('architectures')}) is not a transformers "
                         "architecture; only LLMs that load without remote code (llama, qwen2, ...) are supported")
    text_config = CONFIG_MAPPING[model_type].from_dict(llm, attn_implementation=attn_implementation)
    vision_config = vision_config_from_official(official["vision_config"])
    image_size = official.get("force_image_size") or vision_config.image_size[0]
    ratio = official.get("downsample_ratio", 0.5)
    config = InternVLConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=-1,  # set by the caller
        image_seq_length=int((image_size // vision_config.patch_size[0]) ** 2 * ratio ** 2), downsample_ratio=ratio,
        vision_feature_layer=official.get("select_layer", -1), vision_feature_select_strategy="default",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)))
    config.ps_version = official.get("ps_version", "v1")  # absent key = v1, as the official config class
    config.template, config.bridge = official.get("template"), "mlp"
    config.max_dynamic_patch = official.get("max_dynamic_patch", 6)
    config.use_thumbnail = official.get("use_thumbnail", False)
    return config


def _context_token_id_from_tokenizer(root: Path) -> int:
    try:
        tokenizer = load_local_tokenizer(root)
    except (OSError, ValueError) as err:  # FileNotFoundError included
        raise ValueError(f"{root}: cannot read its tokenizer without remote code ({err}); pass "
                         "image_context_token_id=<id of <IMG_CONTEXT>> explicitly") from None
    token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"{root}: the tokenizer has no {IMG_CONTEXT_TOKEN}; is this an InternVL-Chat checkpoint?")
    return int(token_id)


def load_chat_state(model: InternVLChatModel, native: dict[str, torch.Tensor], assign: bool = False) -> ChatLoadReport:
    """Load native-key tensors; with tied embeddings either copy of the matrix will do."""
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    embed = "model.language_model.embed_tokens.weight"
    if tied and embed not in native and "lm_head.weight" in native:
        native = {**native, embed: native["lm_head.weight"]}
    native = {k: v for k, v in native.items() if k not in tied}
    result = model.load_state_dict(native, strict=False, assign=assign)
    if assign and tied:
        model.tie_weights()
    return ChatLoadReport(missing=[k for k in result.missing_keys if k not in tied],
                          unexpected=list(result.unexpected_keys))


def load_official_chat(directory: str | Path, image_context_token_id: Optional[int] = None,
                       dtype: Optional[torch.dtype] = None, attn_implementation: str = "sdpa",
                       ) -> tuple[InternVLChatModel, ChatLoadReport]:
    """An official InternVL-Chat directory (config.json + weights) -> our chat model and the key report.

    image_context_token_id: the `<IMG_CONTEXT>` id; official configs do not store it, so by default it is
    read from the directory's tokenizer."""
    root = Path(directory)
    config = chat_config_from_official(json.loads((root / "config.json").read_text()), attn_implementation)
    config.image_token_id = (image_context_token_id if image_context_token_id is not None
                             else _context_token_id_from_tokenizer(root))
    native, unknown = official_chat_to_native(read_state_dict(root))
    if dtype is not None:
        native = {k: v.to(dtype) if v.is_floating_point() else v for k, v in native.items()}
    with torch.device("meta"):
        model = InternVLChatModel(config)
    report = load_chat_state(model, native, assign=True)
    report.unexpected += unknown
    report.raise_if_incomplete(str(root))  # first: a missing tensor is also left on meta, named less clearly
    _rebuild_rotary_buffers(model)
    log.info("loaded official InternVL-Chat from %s (ps_version %s)", root, config.ps_version)
    return model.eval(), report


def _rebuild_rotary_buffers(model: InternVLChatModel) -> None:
    """Non-persistent buffers (RoPE inverse frequencies) are not in checkpoints: recompute them off meta."""
    llm = model.model.language_model
    rotary = getattr(llm, "rotary_emb", None)
    if rotary is not None and any(b.is_meta for b in rotary.buffers()):
        llm.rotary_emb = type(rotary)(config=llm.config)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"tensors left uninitialised after loading: {left[:8]}")


def load_chat_model(directory: str | Path, image_context_token_id: Optional[int] = None,
                    dtype: Optional[torch.dtype] = None) -> tuple[InternVLChatModel, ChatLoadReport]:
    """A chat checkpoint directory in either layout: native transformers InternVL (`model_type: internvl`,
    our export_native) or official InternVL-Chat (`model_type: internvl_chat`)."""
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"{root}: no config.json; expected a chat export (native or official layout)")
    model_type = json.loads((root / "config.json").read_text()).get("model_type")
    if model_type == "internvl_chat":
        return load_official_chat(root, image_context_token_id, dtype)
    if model_type != "internvl":
        raise ValueError(f"{root}: model_type={model_type!r} is not a chat checkpoint (internvl | internvl_chat)")
    model, info = InternVLChatModel.from_pretrained(root, dtype=dtype, trust_remote_code=False,
                                                    output_loading_info=True)
    report = ChatLoadReport(missing=list(info["missing_keys"]), unexpected=list(info["unexpected_keys"]))
    report.raise_if_incomplete(str(root))
    return model.eval(), report
