"""InternVL-Chat (stage 3): InternViT -> pixel shuffle -> MLP projector -> any HF causal LM.

The model is transformers' InternVLForConditionalGeneration; the subclass adds only what the official models
have and transformers lacks: the v1 pixel-shuffle token order and the optional QLLaMA query bridge. With
ps_version v2 and the plain MLP bridge the weights and the forward are exactly transformers' own, so the
native export loads with `AutoModelForImageTextToText.from_pretrained` and no remote code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLModel, PreTrainedModel
from transformers.models.internvl.modeling_internvl import InternVLPreTrainedModel

from internvl_train.models.internvit import official as official_vit
from internvl_train.models.chat.bridge import QLlamaQueries, QueryBridge
from internvl_train.models.chat.configuration import ChatConfig
from internvl_train.models.chat.llm import grow_embeddings, load_or_build_llm, load_tokenizer
from internvl_train.models.chat.tokens import IMG_CONTEXT_TOKEN, add_chat_special_tokens, image_context_token_id
from internvl_train.models.chat.pixel_shuffle import num_image_token, pixel_shuffle
from internvl_train.models.internvit.modeling import follows_transformers_qk_norm, use_configured_qk_norm_eps

log = logging.getLogger(__name__)


class InternVLChatBackbone(InternVLModel):
    """transformers' InternVLModel with the checkpoint's pixel-shuffle order and an optional query bridge."""

    def __init__(self, config: InternVLConfig):
        super().__init__(config)
        use_configured_qk_norm_eps(self.vision_tower)  # as InternViT: q/k norm eps = vision layer_norm_eps
        self.query_bridge: Optional[QueryBridge] = None

    def pixel_shuffle(self, vision_features: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        return pixel_shuffle(vision_features, scale_factor, getattr(self.config, "ps_version", "v2"))

    def get_image_features(self, pixel_values: torch.Tensor, vision_feature_layer: Any = None,
                           vision_feature_select_strategy: Any = None, **kwargs: Any) -> Any:
        out = super().get_image_features(pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                                         vision_feature_select_strategy=vision_feature_select_strategy, **kwargs)
        if self.query_bridge is not None:
            queries = self.query_bridge(out.last_hidden_state)  # all final ViT tokens, CLS included
            out.pooler_output = torch.cat([out.pooler_output, queries.to(out.pooler_output.dtype)], dim=1)
        return out

    def forward(self, input_ids: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                image_flags: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        """transformers' forward plus the official `image_flags` ([num_tiles] or [num_tiles, 1]; 0 marks the
        dummy tile of a text-only sample): every tile goes through the ViT, as in the official forward, and the
        features of tiles flagged 0 are dropped before they fill the <IMG_CONTEXT> positions."""
        if image_flags is not None and pixel_values is not None and kwargs.get("mm_encoder_outputs") is None:
            features = self.get_image_features(
                pixel_values=pixel_values, vision_feature_layer=kwargs.get("vision_feature_layer"),
                vision_feature_select_strategy=kwargs.get("vision_feature_select_strategy"), return_dict=True)
            features.pooler_output = features.pooler_output[real_tiles(image_flags, pixel_values.shape[0])]
            if input_ids is not None:
                check_context_tokens(input_ids, self.config.image_token_id, features.pooler_output.shape,
                                     len(image_flags))
            kwargs["mm_encoder_outputs"], pixel_values = {"image": features}, None
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)


def real_tiles(image_flags: torch.Tensor, num_tiles: int) -> torch.Tensor:
    """Boolean [num_tiles] mask of the tiles flagged 1 in the official `image_flags` input."""
    flags = image_flags[:, 0] if image_flags.dim() == 2 and image_flags.shape[1] == 1 else image_flags
    if tuple(flags.shape) != (num_tiles,):
        raise ValueError(f"image_flags has shape {tuple(image_flags.shape)}, expected [{num_tiles}] or "
                         f"[{num_tiles}, 1]: one flag per tile of pixel_values")
    if not bool(((flags == 0) | (flags == 1)).all()):
        raise ValueError(f"image_flags must hold only 0 (dummy tile) and 1 (real tile), got {flags.unique().tolist()}")
    return flags == 1


def check_context_tokens(input_ids: torch.Tensor, context_id: int, features: torch.Size, num_tiles: int) -> None:
    """The kept tiles' features [kept, tokens per tile, D] must fill exactly the <IMG_CONTEXT> positions."""
    kept, per_tile = features[0], features[1]
    found = int((input_ids == context_id).sum())
    if found != kept * per_tile:
        raise ValueError(f"image_flags keep {kept} of {num_tiles} tiles = {kept * per_tile} image features "
                         f"({per_tile} per tile), but input_ids hold {found} {IMG_CONTEXT_TOKEN} tokens: flag 1 "
                         "exactly the tiles whose image blocks are in input_ids, 0 the dummy tiles of text-only "
                         "samples")


class InternVLChatModel(InternVLForConditionalGeneration):
    """InternVLForConditionalGeneration whose inner model is InternVLChatBackbone (same parameter names).
    Its forward takes the official `image_flags` keyword too (passed on to the backbone)."""

    def __init__(self, config: InternVLConfig):
        InternVLPreTrainedModel.__init__(self, config)
        self.model = InternVLChatBackbone(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def ps_version(self) -> str:
        return getattr(self.config, "ps_version", "v2")

    @property
    def is_native_transformers(self) -> bool:
        """True when plain transformers computes the same function (v2 order, no query bridge, q/k norm eps
        the 1e-6 transformers fixes)."""
        return (self.ps_version == "v2" and self.model.query_bridge is None
                and follows_transformers_qk_norm(self.config.vision_config))

    def attach_query_bridge(self, model_g: nn.Module) -> QueryBridge:
        """Add the QLLaMA bridge from a stage-2 InternVL-G (its ViT width must equal this model's)."""
        vision_width = self.config.vision_config.hidden_size
        if model_g.config.vision_width != vision_width:
            raise ValueError(f"InternVL-G cross-attends to {model_g.config.vision_width}-wide ViT tokens, this chat "
                             f"model's ViT is {vision_width} wide: use the stage-2 export of the same ViT")
        bridge = QueryBridge(QLlamaQueries(model_g), self.config.text_config.hidden_size)
        bridge.to(device=self.lm_head.weight.device, dtype=self.lm_head.weight.dtype)
        self.model.query_bridge = bridge
        self.config.image_seq_length = self.config.image_seq_length + bridge.num_queries
        self.config.bridge = "mlp+qllama"
        return bridge


@dataclass
class ChatBuild:
    model: InternVLChatModel
    tokenizer: Any
    new_parameters: list[str]  # parameters created untrained here (mlp1, mlp2); new token rows are logged


def chat_parts(model: InternVLChatModel) -> dict[str, list[nn.Module]]:
    """The separately freezable parts: vision (ViT), mlp (mlp1, and mlp2 of the bridge), llm (decoder and LM
    head), qllama (the bridge's queries + QLLaMA; empty without the bridge)."""
    bridge = model.model.query_bridge
    return {"vision": [model.model.vision_tower],
            "mlp": [model.model.multi_modal_projector] + ([bridge.mlp2] if bridge is not None else []),
            "llm": [model.model.language_model, model.lm_head],
            "qllama": [bridge.queries] if bridge is not None else []}


def make_chat_config(cfg: ChatConfig, vision_config: Any, text_config: Any, image_token_id: int) -> InternVLConfig:
    patch = vision_config.patch_size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    config = InternVLConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        image_seq_length=num_image_token(cfg.force_image_size, patch, cfg.downsample_ratio),
        downsample_ratio=cfg.downsample_ratio, projector_hidden_act="gelu",
        vision_feature_layer=cfg.vision_select_layer, vision_feature_select_strategy="default",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)))
    config.ps_version, config.template, config.bridge = cfg.ps_version, cfg.template, "mlp"
    config.max_dynamic_patch, config.use_thumbnail = cfg.max_dynamic_patch, cfg.use_thumbnail
    return config


@torch.no_grad()
def fit_vision_resolution(tower: nn.Module, image_size: int) -> None:
    """Resize a ViT's position embeddings to image_size once (fp32 bicubic, CLS kept), as the official chat
    models do for force_image_size; the config follows, so exports and processors use the new tile size."""
    config = tower.config
    old = config.image_size[0] if isinstance(config.image_size, (list, tuple)) else config.image_size
    if old == image_size:
        return
    patch = config.patch_size[0] if isinstance(config.patch_size, (list, tuple)) else config.patch_size
    if image_size % patch:
        raise ValueError(f"model.chat.force_image_size={image_size} is not a multiple of the ViT patch size {patch}")
    embeddings = tower.embeddings
    resized = official_vit.resize_position_embedding(embeddings.position_embeddings.data, image_size // patch)
    embeddings.position_embeddings = nn.Parameter(resized, requires_grad=embeddings.position_embeddings.requires_grad)
    config.image_size = embeddings.image_size = embeddings.patch_embeddings.image_size = (image_size, image_size)
    embeddings.patch_embeddings.patch_shape = (image_size // patch, image_size // patch)
    embeddings.patch_embeddings.num_patches = (image_size // patch) ** 2
    log.info("ViT position embeddings resized from %d px to %d px (force_image_size)", old, image_size)


def assemble_chat_model(config: InternVLConfig, vision_tower: nn.Module, llm: PreTrainedModel) -> InternVLChatModel:
    """Put an existing vision tower and causal LM into a chat model; only the projector is created."""
    with torch.device("meta"):
        model = InternVLChatModel(config)
    model.model.vision_tower = vision_tower
    use_configured_qk_norm_eps(vision_tower)  # a tower built by plain transformers has them at 1e-6
    model.model.language_model = llm.base_model
    model.lm_head = llm.get_output_embeddings()
    ref = llm.get_input_embeddings().weight
    projector = model.model.multi_modal_projector.to_empty(device=ref.device)
    for module in projector.modules():
        if isinstance(module, (nn.Linear, nn.LayerNorm)):
            module.reset_parameters()  # PyTorch defaults, as the official mlp1
    projector.to(ref.dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.get_input_embeddings().weight
    return model


def build_chat_model(cfg: ChatConfig, vision_tower: nn.Module, tokenizer: Any = None,
                     model_g: Optional[nn.Module] = None, dtype: Optional[torch.dtype] = None,
                     llm: Optional[PreTrainedModel] = None) -> ChatBuild:
    """A new chat model from a vision tower (InternVLVisionModel) and an LLM (`llm`, else cfg.llm_path or cfg.llm).

    Adds the special tokens to the tokenizer (official order), grows the embeddings, creates `mlp1` (and
    `mlp2` with cfg.bridge == "mlp+qllama", which needs the stage-2 InternVL-G `model_g`), logs what is new."""
    if (cfg.bridge == "mlp+qllama") != (model_g is not None):
        raise ValueError(f"model.chat.bridge={cfg.bridge!r}: pass model_g (a stage-2 InternVL-G) exactly when the "
                         "bridge is 'mlp+qllama'")
    fit_vision_resolution(vision_tower, cfg.force_image_size)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    new_tokens = add_chat_special_tokens(tokenizer)
    llm = llm if llm is not None else load_or_build_llm(cfg, len(tokenizer), dtype)
    grown = grow_embeddings(llm, len(tokenizer))
    llm.config.vocab_size = llm.get_input_embeddings().weight.shape[0]
    config = make_chat_config(cfg, vision_tower.config, llm.config, image_context_token_id(tokenizer))
    model = assemble_chat_model(config, vision_tower, llm)
    new = ["model.multi_modal_projector." + n for n, _ in model.model.multi_modal_projector.named_parameters()]
    if model_g is not None:
        bridge = model.attach_query_bridge(model_g)
        new += ["model.query_bridge.mlp2." + n for n, _ in bridge.mlp2.named_parameters()]
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant by default
    log.info("new: special tokens %s (%d embedding rows, mean-initialised); parameters %s (%d values); "
             "%d LLM tokens per tile, pixel shuffle %s", new_tokens, grown, new,
             sum(p.numel() for n, p in model.named_parameters() if n in set(new)), config.image_seq_length,
             cfg.ps_version)
    return ChatBuild(model=model, tokenizer=tokenizer, new_parameters=new)


def chat_forward(model: InternVLChatModel, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                 labels: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                 position_ids: Optional[torch.Tensor] = None, image_flags: Optional[torch.Tensor] = None) -> Any:
    """Training forward -> output with .logits (and .loss, mean over labelled tokens, when labels are given).

    pixel_values: all tiles of the batch concatenated in the order their image blocks appear (row by row).
    image_flags (optional, official input): [num_tiles] with 0 for the dummy tiles of text-only samples.
    Packed rows: pass per-sample position_ids that restart at 0 for every sample; the attention mask is then
    derived from them (block-diagonal causal, transformers' packed-sequence masking), so samples never attend
    to each other. Padding at the end of a packed row is harmless: it comes after every real token."""
    if position_ids is not None:
        attention_mask = None  # transformers detects packing only without a 2D mask and without a KV cache
    if pixel_values is not None and pixel_values.shape[0] == 0:
        pixel_values = image_flags = None
    if pixel_values is None and bool((input_ids == model.config.image_token_id).any()):
        raise ValueError("input_ids hold <IMG_CONTEXT> tokens but no pixel_values were given")
    flags = {} if image_flags is None else {"image_flags": image_flags}  # a keyword only our backbone knows
    return model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                 position_ids=position_ids, labels=labels, use_cache=False, **flags)
