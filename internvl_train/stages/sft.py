"""Stage 3: InternVL-Chat supervised fine-tuning through the MLP bridge (pixel shuffle + mlp1 into an LLM).

What model: the ViT of the previous stage's export (or a chat checkpoint to continue, or official InternViT
weights, or a random ViT for the ablation), an LLM from model.chat (a local HF directory or an inline
config), a new mlp1 (and mlp2 with the QLLaMA bridge). What trains: per stage.freeze_* switches, the last k
ViT layers, LoRA adapters. Loss: weighted next-token loss on assistant tokens, the same packed or not.
Evaluation: greedy answers to held-out VQA questions, accuracy against the majority-answer baseline.
Export: native transformers InternVL (when transformers computes the same function) + the official layout.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from data_pipelines.sft import build_sft_loader, resolve_heldout_vqa
from internvl_train.eval.vqa import write_vqa_results
from internvl_train.eval.vqa_generate import answer_items, prediction_records, score_answers
from internvl_train.losses.lm import lm_loss
from internvl_train.models.chat.modeling import InternVLChatModel, chat_forward
from internvl_train.models.chat.build import build_chat_from_config
from internvl_train.inference.export import export_native, export_official
from internvl_train.inference.prompt import ChatPrompter, PromptSettings
from internvl_train.models.lora import merged_state_dict
from internvl_train.engine.stage_api import Stage, StatefulLoader
from internvl_train.stages.common import model_dtype, to_device
from internvl_train.stages.image_text_eval import log_results_tables
from internvl_train.stages.sft_model import (add_lora_adapters, frozen_parts, load_sft_tokenizer,
                                             resolve_text_tower_source, resolve_vision_init)

log = logging.getLogger(__name__)


class SftStage(Stage):
    name = "sft"

    def __init__(self, cfg: Any, dist: Any):
        super().__init__(cfg, dist)
        self.init_from = resolve_vision_init(cfg)
        self.text_tower_from = resolve_text_tower_source(cfg, self.init_from)
        self.tokenizer = load_sft_tokenizer(cfg, self.init_from, self.text_tower_from)
        self.sft_data = OmegaConf.to_object(cfg.data.sft) if OmegaConf.is_config(cfg.data.sft) else cfg.data.sft

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        build = build_chat_from_config(self.cfg.model, init_from=self.init_from, tokenizer=self.tokenizer,
                                       text_tower_from=self.text_tower_from)
        model, self.tokenizer = build.model, build.tokenizer
        self._model_config = model.config
        trained_with = getattr(model.config, "template", None)
        if trained_with and trained_with != self.cfg.model.chat.template:
            raise ValueError(f"init_from={self.init_from} was trained with template {trained_with!r}, "
                             f"model.chat.template is {self.cfg.model.chat.template!r}: make them agree")
        self._record_inference_settings(model)
        add_lora_adapters(model, self.cfg.stage)
        return model

    def _record_inference_settings(self, model: InternVLChatModel) -> None:
        """The chat CLI and evaluation must prompt and tile exactly as the data pipeline did: keep the
        settings in the model config, which every export writes (the loader takes its tiling from there)."""
        chat, config = self.cfg.model.chat, model.config
        config.template = chat.template
        config.system_message = self.sft_data.system_message
        config.min_dynamic_patch, config.max_dynamic_patch = chat.min_dynamic_patch, chat.max_dynamic_patch
        config.use_thumbnail, config.dynamic_image_size = chat.use_thumbnail, chat.dynamic_image_size

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        return frozen_parts(model, self.cfg.stage)

    # ---- data --------------------------------------------------------------------------------
    def build_train_loader(self) -> StatefulLoader:
        settings = PromptSettings.from_model_config(self._config())
        return build_sft_loader(self.sft_data, self.tokenizer, self.dist.rank, self.dist.world_size,
                                self.cfg.trainer.micro_batch_size, self.cfg.seed, settings.num_image_token,
                                settings.image_size, self.cfg.model.chat.template, min_tiles=settings.min_tiles,
                                max_tiles=settings.max_tiles, use_thumbnail=settings.use_thumbnail,
                                dynamic=settings.dynamic)

    def _config(self) -> Any:
        if not hasattr(self, "_model_config"):
            raise RuntimeError("build_model() must run before the loader or evaluation is built")
        return self._model_config

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        return int(batch["num_samples"]), int(batch["attention_mask"].sum())

    # ---- step --------------------------------------------------------------------------------
    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Packed or not, each sample attends only to itself (position ids restart per sample) and the loss is
        sum(w * CE) / sum(w) over the micro-batch's assistant tokens."""
        b = to_device(batch, self.dist.device)
        pixel_values = b["pixel_values"].to(model_dtype(model))
        out = chat_forward(model, b["input_ids"], pixel_values, position_ids=b["position_ids"])
        loss = lm_loss(out.logits, b["labels"], b["loss_weights"], b["position_ids"])
        return {"lm": loss, "loss": loss}

    # ---- evaluation and export ---------------------------------------------------------------
    def prompter(self, model: nn.Module) -> ChatPrompter:
        return ChatPrompter(self.tokenizer, PromptSettings.from_model_config(model.config))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        st = self.cfg.stage
        items = resolve_heldout_vqa(self.sft_data)
        items = items[: st.eval_max_questions] if st.eval_max_questions else items
        if not items:
            return {}
        from internvl_train.engine.collectives import all_gather_objects

        answers = answer_items(model, self.prompter(model), items, st.eval_batch_size, st.max_new_tokens,
                               self.dist.rank, self.dist.world_size,
                               synced_gpus=self.cfg.deepspeed.zero_stage == 3 and self.dist.world_size > 1)
        merged = {k: v for part in all_gather_objects(answers) for k, v in part.items()}
        metric = self.sft_data.heldout_vqa_metric
        metrics = score_answers(items, merged, metric)
        if self.dist.rank == 0:
            write_vqa_results(Path(self.cfg.run_dir) / "vqa_predictions.jsonl",
                              prediction_records(items, merged, metric))
        results = {f"vqa/{k}": v for k, v in metrics.items()}
        log_results_tables(results, self.dist.rank)
        return results

    def export(self, model: nn.Module, out_dir: str) -> None:
        """Native transformers checkpoint in out_dir (when transformers computes this model) and the
        official InternVL-Chat layout in out_dir/official (out_dir itself otherwise); LoRA merged."""
        state = merged_state_dict(model)
        out = Path(out_dir)
        official_dir = out / "official" if model.is_native_transformers else out
        if model.is_native_transformers:
            export_native(model, self.tokenizer, out, state=state)
        export_official(model, self.tokenizer, official_dir, state=state)
        _add_inference_fields(official_dir / "config.json", model.config)
        log.info("exported the chat model to %s", out)


def _add_inference_fields(config_path: Path, config: Any) -> None:
    """The official config has no system message / min tiles: add ours so our loader prompts identically."""
    data = json.loads(config_path.read_text())
    data.update({"system_message": config.system_message, "min_dynamic_patch": config.min_dynamic_patch,
                 "dynamic_image_size": config.dynamic_image_size})
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True))
