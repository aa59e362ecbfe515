"""Assemble the SFT loader from its config (the one entry point the stage calls)."""
from __future__ import annotations

from typing import Any

from data_pipelines.sft.config import SftDataConfig
from data_pipelines.sft.encode import ConversationEncoder, EncoderSettings
from data_pipelines.sft.loader import SftLoader
from data_pipelines.sft.source import open_source
from data_pipelines.sft.templates import TEMPLATE_NAMES
from internvl_train.errors import qualified


def resolve_sources(cfg: SftDataConfig) -> tuple[str | None, str | None, str | None]:
    """(meta_path, llava_json, image_root); `demo` builds the demo conversations on first use."""
    if not cfg.demo:
        return cfg.meta_path, cfg.llava_json, cfg.image_root
    from data_pipelines.demo import ensure_demo_data
    from data_pipelines.demo.sft import ensure_demo_sft

    return ensure_demo_sft(ensure_demo_data()).meta_path, None, None


def build_sft_loader(cfg: SftDataConfig, tokenizer: Any, rank: int, world_size: int, micro_batch_size: int,
                     seed: int, num_image_token: int, image_size: int, template: str, *, min_tiles: int = 1,
                     max_tiles: int = 12, use_thumbnail: bool = True, dynamic: bool = True) -> SftLoader:
    """The endless, resumable SFT loader of this rank. `num_image_token` and `image_size` come from the
    model (tokens per tile after pixel shuffle, ViT input size) and override the config's values;
    `template` is the chat model's conversation template (TEMPLATE_NAMES); the tiling (`min_tiles`..`max_tiles`
    tiles per image, `use_thumbnail`, `dynamic` resolution) is the chat model's too (model.chat.min_dynamic_patch,
    max_dynamic_patch, use_thumbnail, dynamic_image_size; the defaults are ChatConfig's)."""
    with qualified("data.sft"):
        cfg.validate()
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles} and {max_tiles}")
    if template not in TEMPLATE_NAMES:
        raise ValueError(f"unknown conversation template {template!r}; choose one of {TEMPLATE_NAMES}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos or <pad>) "
                         "before building the SFT loader")
    num_image_token = num_image_token or cfg.num_image_token
    if num_image_token < 1:
        raise ValueError("num_image_token must come from the model (tokens per tile), got 0")
    settings = EncoderSettings(
        template=template, system_message=cfg.system_message, num_image_token=num_image_token,
        image_size=image_size, min_tiles=min_tiles, max_tiles=max_tiles,
        use_thumbnail=use_thumbnail, dynamic=dynamic, max_seq_len=cfg.max_seq_len,
        max_tiles_per_sample=cfg.max_tiles_per_row, max_image_pixels=cfg.max_image_pixels,
        max_aspect_ratio=cfg.max_aspect_ratio)
    meta_path, llava_json, image_root = resolve_sources(cfg)
    return SftLoader(
        open_source(meta_path, llava_json, image_root), ConversationEncoder(tokenizer, settings),
        rank=rank, world_size=world_size, micro_batch_size=micro_batch_size, seed=seed, packing=cfg.packing,
        max_packed_tokens=cfg.max_packed_tokens, max_tiles_per_row=cfg.max_tiles_per_row,
        loss_reduction=cfg.loss_reduction, pad_id=tokenizer.pad_token_id, image_size=image_size,
        num_workers=cfg.num_workers, prefetch=cfg.prefetch, max_consecutive_failures=cfg.max_consecutive_failures)


def resolve_heldout_vqa(cfg: SftDataConfig) -> list[dict[str, Any]]:
    """Held-out VQA items {question, image (path), answers, ...}: the config's file, the demo's, or none."""
    from data_pipelines.sft.source import read_vqa_jsonl

    if cfg.heldout_vqa:
        return read_vqa_jsonl(cfg.heldout_vqa, cfg.heldout_image_root)
    if cfg.demo:
        from data_pipelines.demo import ensure_demo_data
        from data_pipelines.demo.sft import ensure_demo_sft

        return read_vqa_jsonl(ensure_demo_sft(ensure_demo_data()).heldout_vqa)
    return []
