"""Stage 1: InternViT + LLaMA text tower trained with the image-text contrastive loss (InternVL-C).

What trains: both towers by default (the paper trains all 13B parameters); `stage.lock_vision` /
`stage.lock_text` lock a tower (LiT-style), optionally leaving its last k layers trainable. The CLIP heads
(clip_projector, text_projection, logit_scale) always train. Loss: ITC over the global batch with exact
gradients across ranks; with gradient accumulation, the embedding-cache algorithm keeps the loss contrastive
over the whole step batch. Evaluation: zero-shot classification and image<->text retrieval.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
from torch import nn

from data_pipelines.eval_sets import build_pair_eval_sets
from data_pipelines.pairs import build_pair_loader
from internvl_train.stages.contrastive_accumulation import contrastive_accumulation_step
from internvl_train.losses.itc import MAX_LOGIT_SCALE, clamp_logit_scale_, itc_loss
from internvl_train.losses.itg import itg_labels
from internvl_train.losses.lm import lm_loss, token_loss_weights
from internvl_train.models.internvl_c.build import build_internvl_c
from internvl_train.models.weights import save_pretrained
from internvl_train.models.flops import internvl_c_train_flops_per_sample
from internvl_train.models.internvl_c.text_tower import prepare_caption_inputs
from internvl_train.engine.stage_api import Stage, StatefulLoader
from internvl_train.stages.common import (check_prefix_tokens, load_tokenizer, model_dtype, prefix_token_ids,
                                          to_device)
from internvl_train.stages.config import resolved_text_lm_weight
from internvl_train.stages.image_text_eval import image_text_metrics, log_results_tables

log = logging.getLogger(__name__)
MAX_SCALE = math.exp(MAX_LOGIT_SCALE)  # 100: temperature never below 1/100


def locked_modules(tower_layers: nn.ModuleList, tower: nn.Module, unlocked_layers: int) -> list[nn.Module]:
    """The modules of a locked tower: all of it, or all but its last `unlocked_layers` blocks."""
    if unlocked_layers <= 0:
        return [tower]
    if unlocked_layers >= len(tower_layers):
        raise ValueError(f"unlocked layers ({unlocked_layers}) >= the tower's {len(tower_layers)} layers: "
                         "unlock the tower instead")
    unlocked = {id(p) for layer in tower_layers[-unlocked_layers:] for p in layer.parameters()}
    return [m for m in tower.children() if not any(id(p) in unlocked for p in m.parameters())] + \
        list(tower_layers[:-unlocked_layers])


class ContrastiveStage(Stage):
    name = "contrastive"

    def __init__(self, cfg: Any, dist: Any):
        super().__init__(cfg, dist)
        self.tokenizer = load_tokenizer(cfg)
        self.prefix_ids = prefix_token_ids(self.tokenizer, cfg.stage.caption_prefix)
        self.text_lm_weight = resolved_text_lm_weight(cfg)
        log.info("text tower LM loss weight: %s (stage.text_lm_weight=%s)", self.text_lm_weight,
                 cfg.stage.text_lm_weight)

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        vocab = None if self.cfg.model.text.vocab_size else len(self.tokenizer)
        return build_internvl_c(self.cfg.model, vocab_size=vocab, init_from=self.cfg.init_from)

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        st, frozen = self.cfg.stage, []
        if st.lock_vision:
            frozen += locked_modules(model.vision.encoder.layer, model.vision, st.unlocked_vision_layers)
        if st.lock_text:
            frozen += locked_modules(model.text.model.layers, model.text, st.unlocked_text_layers)
        return frozen

    # ---- data --------------------------------------------------------------------------------
    def build_train_loader(self) -> StatefulLoader:
        tr = self.cfg.trainer
        return build_pair_loader(self.cfg.data, self.dist.rank, self.dist.world_size, tr.micro_batch_size,
                                 self.cfg.seed)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        return len(batch["captions"]), 0  # captions are tokenised inside the step: no token count (tokens/s = 0)

    def _prepare(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        st = self.cfg.stage
        text = prepare_caption_inputs(self.tokenizer, batch["captions"], st.caption_prefix, st.max_text_len)
        if self.text_lm_weight > 0:  # the LM labels mask the prefix by its token count
            check_prefix_tokens(text["input_ids"], self.prefix_ids, "stage.caption_prefix", st.caption_prefix)
        return to_device({**batch, **text}, self.dist.device, model_dtype(model))

    # ---- step --------------------------------------------------------------------------------
    def _encode(self, model: nn.Module, batch: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        """(image, text, logit scale[, LM loss of the text pass when stage.text_lm_weight > 0])."""
        inputs = self._prepare(model, batch)
        out = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"],
                    text_logits=self.text_lm_weight > 0)
        # the clamp in the forward holds even where after_optimizer_step cannot reach a master copy (bf16, ZeRO-0)
        encoded = (out["image_embeds"], out["text_embeds"], out["logit_scale"].clamp(max=MAX_SCALE))
        if self.text_lm_weight > 0:  # per-caption means averaged: exact over ranks and micro-batches of equal size
            labels = itg_labels(inputs["input_ids"], self.prefix_ids.numel(), inputs["attention_mask"])
            encoded += (lm_loss(out["text_logits"], labels, token_loss_weights(labels, "sample")),)
        return encoded

    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        image, text, scale, *text_lm = self._encode(model, batch)
        itc = itc_loss(image, text, scale, self.dist.rank, self.dist.world_size)
        if not text_lm:
            return {"itc": itc, "loss": itc}
        return {"itc": itc, "text_lm": text_lm[0], "loss": itc + self.text_lm_weight * text_lm[0]}

    def train_step(self, engine: Any, micro_batches: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(micro_batches) == 1 or not self.cfg.stage.contrastive_accumulation:
            return super().train_step(engine, micro_batches)

        def backward(loss: torch.Tensor, is_last: bool) -> None:
            engine.backward(loss)
            engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary

        text_lm = (lambda batch, live, cache: {"text_lm": live[3]}) if self.text_lm_weight > 0 else None
        losses = contrastive_accumulation_step(
            engine.module, micro_batches, self._encode, backward, self.dist.rank, self.dist.world_size,
            backward_divisor=engine.gradient_accumulation_steps(), extra_losses=text_lm,
            extra_weights={"text_lm": self.text_lm_weight})
        return losses

    def after_optimizer_step(self, model: nn.Module) -> None:
        clamp_logit_scale_(model.logit_scale)

    # ---- evaluation and export ---------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        st = self.cfg.stage

        def encode_texts(captions: list[str]) -> torch.Tensor:
            text = prepare_caption_inputs(self.tokenizer, captions, st.caption_prefix, st.max_text_len)
            text = to_device(text, self.dist.device)
            return model(text["input_ids"], text["attention_mask"], task="encode_text")

        results: dict[str, float] = {}
        for eval_set in build_pair_eval_sets(self.cfg.data, self.dist.rank, self.dist.world_size).values():
            encode_images = lambda pixels: model(pixels, task="encode_image")  # noqa: E731 (ZeRO-3: via the module)
            results.update(image_text_metrics(eval_set, {"c": encode_images}, encode_texts,
                                              lambda b: to_device(b, self.dist.device, model_dtype(model))))
        log_results_tables(results, self.dist.rank)
        return results

    streams_zero3_export = True  # under ZeRO-3 every rank calls export: save_pretrained gathers module by module

    def export(self, model: nn.Module, out_dir: str) -> None:
        save_pretrained(model, out_dir)
        if self.dist.rank == 0:
            self.tokenizer.save_pretrained(out_dir)
            log.info("exported InternVL-C to %s", out_dir)

    def flops_per_sample(self) -> float:
        """Counted at stage.max_text_len tokens per caption: an upper bound (captions are usually shorter),
        so model FLOPs/s and MFU are upper bounds too."""
        if not hasattr(self, "_flops"):
            from internvl_train.models.internvl_c.modeling import InternVLC

            with torch.device("meta"):
                meta = InternVLC(self.cfg.model, None if self.cfg.model.text.vocab_size else len(self.tokenizer))
            self._flops = internvl_c_train_flops_per_sample(meta, self.cfg.stage.max_text_len)
        return self._flops
