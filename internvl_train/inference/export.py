"""Export a chat model: (a) native transformers InternVL (loads with plain `from_pretrained`, no remote code),
(b) the official InternVL-Chat layout (`vision_model.*`, `mlp1.*`, `language_model.*`). Both carry the
training conversation template as the tokenizer's `chat_template` and a generation_config.json that stops at
its end-of-turn token, so `apply_chat_template` + `generate` answer as `python -m internvl_train.chat`."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from huggingface_hub import save_torch_state_dict
from transformers import GenerationConfig, GotOcr2ImageProcessor, InternVLProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

from internvl_train.models.chat.modeling import InternVLChatModel
from internvl_train.models.chat.official import native_chat_to_official
from internvl_train.inference.prompt import ChatPrompter, PromptSettings

log = logging.getLogger(__name__)

VIDEO_TOKEN = "<video>"  # transformers' InternVLProcessor requires one; InternVL-Chat itself has none


def export_native(model: InternVLChatModel, tokenizer: Any, out_dir: str | Path, max_shard_size: str = "5GB",
                  state: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """config.json + safetensors + tokenizer + processor files: `AutoModelForImageTextToText.from_pretrained(out_dir)`
    and `AutoProcessor.from_pretrained(out_dir)` with plain transformers. `state` overrides the module's own
    state dict (e.g. one gathered from ZeRO-3 by the engine)."""
    if not model.is_native_transformers:
        raise ValueError(
            f"this chat model (ps_version={model.ps_version}, bridge={getattr(model.config, 'bridge', 'mlp')}) "
            "computes something plain transformers cannot (transformers' InternVL has only the v2 token order "
            "and the MLP bridge): use export_official, or fine-tune with ps_version=v2 and bridge=mlp")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = native_processor(model, tokenizer)
    state, config = _native_state(model, len(processor.tokenizer), state)
    config.save_pretrained(out)
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    processor.save_pretrained(out)  # chat_template.jinja serves the processor and its tokenizer
    _save_generation_config(model, tokenizer, out)
    log.info("exported native transformers InternVL checkpoint to %s", out)
    return out


def _native_state(model: InternVLChatModel, vocab: int, state: Optional[Mapping[str, torch.Tensor]]
                  ) -> tuple[dict[str, torch.Tensor], Any]:
    """State dict and config to save; embedding rows padded (mean row) up to the processor's vocabulary."""
    state = _cpu_state(model, state)
    config = copy.deepcopy(model.config)
    config.architectures, config.dtype = ["InternVLForConditionalGeneration"], model.dtype
    embed, head = "model.language_model.embed_tokens.weight", "lm_head.weight"
    rows = state[embed].shape[0]
    if vocab > rows:
        for key in (embed, head):
            weight = state[key]
            state[key] = torch.cat([weight, weight.mean(0, keepdim=True).expand(vocab - rows, -1)])
        config.text_config.vocab_size = vocab
        log.info("native export: %d embedding row(s) added for the processor's %s token", vocab - rows, VIDEO_TOKEN)
    if config.tie_word_embeddings:
        state.pop(head)  # tied to the input embeddings on load, as save_pretrained does
    return state, config


def native_processor(model: InternVLChatModel, tokenizer: Any) -> InternVLProcessor:
    """transformers' InternVLProcessor for this model: tiles of the ViT's size (GotOcr2 tiling, thumbnail
    when tiled), ImageNet mean/std, bicubic, `image_seq_length` context tokens per tile. The processor needs a
    video token: `<video>` is added to a copy of the tokenizer after the InternVL tokens."""
    tokenizer = _with_chat_template(model, tokenizer)
    tokenizer.add_tokens([VIDEO_TOKEN], special_tokens=True)
    tokenizer._set_model_specific_special_tokens({"video_token": VIDEO_TOKEN})
    size = model.config.vision_config.image_size[0]
    images = GotOcr2ImageProcessor(
        crop_to_patches=True, min_patches=1, max_patches=getattr(model.config, "max_dynamic_patch", 12),
        size={"height": size, "width": size}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
        resample=PILImageResampling.BICUBIC)
    return InternVLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(),
                             image_seq_length=int(model.config.image_seq_length),
                             chat_template=getattr(tokenizer, "chat_template", None))


def inference_prompter(model: InternVLChatModel, tokenizer: Any) -> Optional[ChatPrompter]:
    """The prompter our chat CLI would use for this model; None when its config names no template (a model
    built outside stage 3): such exports carry no chat template or generation config of ours."""
    if tokenizer is None or not getattr(model.config, "template", None):
        return None
    return ChatPrompter(tokenizer, PromptSettings.from_model_config(model.config))


def _with_chat_template(model: InternVLChatModel, tokenizer: Any) -> Any:
    """A copy of the tokenizer whose `chat_template` renders the training template (the caller's is kept)."""
    tokenizer = copy.deepcopy(tokenizer)
    prompter = inference_prompter(model, tokenizer)
    if prompter is not None:
        tokenizer.chat_template = prompter.chat_template()
    return tokenizer


def generation_config(prompter: ChatPrompter) -> GenerationConfig:
    """Greedy, stopping at the template's end-of-turn token (then the tokenizer EOS), as our generate does."""
    tok, stop = prompter.tokenizer, prompter.stop_token_ids()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=stop[0] if len(stop) == 1 else stop,
                            pad_token_id=pad, do_sample=False)


def _save_generation_config(model: InternVLChatModel, tokenizer: Any, out: Path) -> None:
    prompter = inference_prompter(model, tokenizer)
    if prompter is not None:
        generation_config(prompter).save_pretrained(out)


def export_official(model: InternVLChatModel, tokenizer: Any, out_dir: str | Path, max_shard_size: str = "5GB",
                    state: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Official InternVL-Chat key layout and config fields (our query bridge, if any, as `query_bridge.*`)."""
    state = _cpu_state(model, state)
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # one copy of a tied matrix: the input embeddings
    state, unknown = native_chat_to_official(state)
    if unknown:
        raise ValueError(f"no official name for {unknown[:8]} ({len(unknown)} keys)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, out, max_shard_size=max_shard_size)
    (out / "config.json").write_text(json.dumps(official_config(model), indent=2, sort_keys=True))
    _with_chat_template(model, tokenizer).save_pretrained(out)
    _save_generation_config(model, tokenizer, out)
    log.info("exported official-layout InternVL-Chat checkpoint to %s", out)
    return out


def _cpu_state(model: InternVLChatModel, state: Optional[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    source = state if state is not None else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in source.items()}


def official_config(model: InternVLChatModel) -> dict:
    """The fields of the official InternVLChatConfig that describe this model."""
    cfg, vc = model.config, model.config.vision_config
    text = cfg.text_config.to_dict()
    text["architectures"] = text.get("architectures") or [type(model.model.language_model).__name__.replace(
        "Model", "ForCausalLM")]
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "vision_config": {
            "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
            "hidden_size": vc.hidden_size, "num_hidden_layers": vc.num_hidden_layers,
            "num_attention_heads": vc.num_attention_heads, "intermediate_size": vc.intermediate_size,
            "image_size": vc.image_size[0], "patch_size": vc.patch_size[0], "num_channels": vc.num_channels,
            "norm_type": vc.norm_type, "layer_norm_eps": vc.layer_norm_eps, "qk_normalization": vc.use_qk_norm,
            "qkv_bias": vc.attention_bias, "hidden_act": vc.hidden_act},
        "llm_config": text,
        "downsample_ratio": cfg.downsample_ratio, "ps_version": getattr(cfg, "ps_version", "v2"),
        "select_layer": cfg.vision_feature_layer, "template": getattr(cfg, "template", None),
        "force_image_size": vc.image_size[0], "dynamic_image_size": True,
        "max_dynamic_patch": getattr(cfg, "max_dynamic_patch", 12), "min_dynamic_patch": 1,
        "use_thumbnail": getattr(cfg, "use_thumbnail", True), "bridge": getattr(cfg, "bridge", "mlp"),
    }
