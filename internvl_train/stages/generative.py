"""Stage 2: QLLaMA generative training with ITC + ITM + ITG (InternVL-G).

What model: InternVL-G built from a stage-1 export (`init_from`, default `stage.default_init_from` = the demo
stage-1 run) or official weights; only the queries, the cross-attention layers, `clip_projector2` and
`itm_head` are new. What trains: those new parts and `logit_scale`; InternViT, `clip_projector`,
`text_projection` and the inherited LLaMA weights are frozen (eval mode), as in the paper; `stage.lora_rank`
adds LoRA adapters on the inherited QLLaMA weights, `stage.train_qllama` trains them in full (the demo
default). Losses, per micro-batch over the global batch of all ranks: ITC (query-based image embedding vs. the
text embedding, exact gradient across ranks), ITM (hard or random negatives drawn from the global batch,
itm_head averaged over the query outputs), ITG (captioning conditioned on the queries); total = weighted sum.
Evaluation: retrieval with InternVL-C, InternVL-G and the official ensemble side by side (optionally ITM
re-ranking), greedy captions scored with BLEU-4 / CIDEr.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from data_pipelines.eval_sets import build_pair_eval_sets
from data_pipelines.pairs import build_pair_loader
from internvl_train.engine.collectives import all_gather_cat, check_same_size_on_all_ranks
from internvl_train.losses.combine import combine_losses
from internvl_train.losses.itc import clamp_logit_scale_, itc_loss, scaled_logit_scale
from internvl_train.losses.itg import itg_labels, itg_loss
from internvl_train.losses.itm import ItmOutput, itm_loss, sample_itm_negatives
from internvl_train.models.internvl_g import official as internvl14b
from internvl_train.models.internvl_g.build import build_internvl_g
from internvl_train.models.weights import save_pretrained
from internvl_train.models.lora import has_lora, merged_state_dict, without_lora
from internvl_train.models.internvl_c.text_tower import prepare_caption_inputs
from internvl_train.engine.stage_api import Stage, StatefulLoader
from internvl_train.stages.common import (check_prefix_tokens, load_tokenizer, model_dtype, prefix_token_ids,
                                          stable_ids, to_device)
from internvl_train.stages.config import generative_init_from
from internvl_train.stages.generative_eval import caption_metrics_on, retrieval_metrics_on
from internvl_train.stages.generative_lora import add_qllama_lora
from internvl_train.stages.image_text_eval import log_results_tables

log = logging.getLogger(__name__)

OFFICIAL_EXPORT_DIR = "official"  # <export>/official: the InternVL-14B layout


class GenerativeStage(Stage):
    name = "generative"

    def __init__(self, cfg: Any, dist: Any):
        init_from = generative_init_from(cfg)
        if init_from is not None and not os.path.exists(os.path.expanduser(init_from)):
            raise FileNotFoundError(f"init_from={init_from}: no stage-1 export there; run stage 1 first "
                                    "(python -m internvl_train stage=contrastive) or set init_from=<export dir>")
        if init_from != cfg.init_from:  # the default stage-1 export: every reader of cfg sees the same source
            cfg = OmegaConf.merge(cfg, {"init_from": init_from})
        super().__init__(cfg, dist)
        self.tokenizer = load_tokenizer(cfg)
        st = cfg.stage
        self.weights = {"itc": st.itc_weight, "itm": st.itm_weight, "itg": st.itg_weight}
        self.itg_prompt = prefix_token_ids(self.tokenizer, st.itg_prefix)
        self.empty_text_len = empty_text_length(self.tokenizer, st) if st.ignore_empty_text else None

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        st = self.cfg.stage
        vocab = None if self.cfg.model.text.vocab_size else len(self.tokenizer)
        model = build_internvl_g(self.cfg.model, vocab_size=vocab, init_from=self.cfg.init_from)
        for param in model.stage2_frozen_parameters():
            param.requires_grad_(False)
        if st.lora_rank:
            add_qllama_lora(model, st.lora_rank, st.lora_alpha)
        return model

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        return without_lora(model.stage2_frozen_modules(self.cfg.stage.train_qllama))

    # ---- data --------------------------------------------------------------------------------
    def build_train_loader(self) -> StatefulLoader:
        tr = self.cfg.trainer
        return build_pair_loader(self.cfg.data, self.dist.rank, self.dist.world_size, tr.micro_batch_size,
                                 self.cfg.seed)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        return len(batch["captions"]), 0

    def _prepare(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
        st = self.cfg.stage
        text = prepare_caption_inputs(self.tokenizer, batch["captions"], st.caption_prefix, st.max_text_len)
        itg = prepare_caption_inputs(self.tokenizer, batch["captions"], st.itg_prefix, st.max_text_len)
        check_prefix_tokens(itg["input_ids"], self.itg_prompt, "stage.itg_prefix", st.itg_prefix)
        inputs = {**batch, **text, "itg_input_ids": itg["input_ids"], "itg_attention_mask": itg["attention_mask"]}
        return to_device(inputs, self.dist.device, model_dtype(model))

    # ---- step --------------------------------------------------------------------------------
    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        inputs = self._prepare(model, batch)
        check_same_size_on_all_ranks(len(batch["captions"]), "stage 2 global batch", self.dist.device)
        with torch.no_grad():  # the ViT is frozen: its tokens need no graph
            tokens = model(inputs["pixel_values"], task="vision_tokens")
        image = F.normalize(model(tokens, task="encode_image_g"), dim=-1)
        text_trains = has_lora(model) or self.cfg.stage.train_qllama
        with torch.set_grad_enabled(torch.is_grad_enabled() and text_trains):  # else a frozen text path
            text = F.normalize(model(inputs["input_ids"], inputs["attention_mask"], task="encode_text"), dim=-1)
        scale = scaled_logit_scale(model.logit_scale).reshape(())
        empty = self._empty_texts(inputs["attention_mask"])
        terms, metrics = {}, {"logit_scale": scale.detach()}
        if empty is not None:
            metrics["empty_texts"] = empty.sum().float()
        if self.weights["itc"]:
            terms["itc"] = itc_loss(image, text, scale, self.dist.rank, self.dist.world_size, ignore=empty)
        if self.weights["itm"]:
            itm = self._itm(model, inputs, tokens, image, text, scale, empty)
            terms["itm"] = itm.loss
            metrics.update(itm_accuracy=itm.accuracy, itm_skipped=torch.tensor(float(itm.skipped)))
        if self.weights["itg"]:
            labels = itg_labels(inputs["itg_input_ids"], self.itg_prompt.numel(), inputs["itg_attention_mask"])
            logits = model(tokens, inputs["itg_input_ids"], inputs["itg_attention_mask"], task="itg_logits")
            terms["itg"] = itg_loss(logits, labels)
        losses = combine_losses(terms, {k: w for k, w in self.weights.items() if k in terms})
        return {**losses, **metrics}

    def _empty_texts(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """[B] bool: captions that gave no token (the text is the prefix alone); None when the rule is off.
        The official InternVL-G forward ignores such rows in ITC and such pairs in ITM by token count."""
        if self.empty_text_len is None:
            return None
        return attention_mask.sum(dim=1) <= self.empty_text_len

    def _itm(self, model: nn.Module, inputs: Mapping[str, Any], tokens: torch.Tensor, image: torch.Tensor,
             text: torch.Tensor, scale: torch.Tensor, empty: torch.Tensor | None) -> ItmOutput:
        """ITM on the local positives and one negative per local image and per local text, drawn from the
        global batch (hard: by ITC similarity). The frozen ViT's tokens of other ranks come without
        gradient; the negatives depend only on the global batch, not on how it is split over ranks.
        Pairs whose text is empty (`empty`, gathered) have no target."""
        b, device = image.shape[0], image.device
        all_image, all_text = all_gather_cat(image.detach().float()), all_gather_cat(text.detach().float())
        local_rows = torch.arange(b, device=device) + self.dist.rank * b
        image_ids = all_gather_cat(stable_ids(inputs["keys"], device))
        text_ids = all_gather_cat(stable_ids(inputs["captions"], device))
        generator = torch.Generator().manual_seed((int(image_ids.sum()) + self.cfg.seed) % (2**63 - 1))
        negatives = sample_itm_negatives(scale.detach() * image.detach().float() @ all_text.T,
                                         scale.detach() * text.detach().float() @ all_image.T, local_rows,
                                         image_ids, text_ids, self.cfg.stage.itm_negatives, generator)
        all_tokens = all_gather_cat(tokens)
        all_ids, all_mask = (all_gather_cat(_pad_to(inputs[k], self.cfg.stage.max_text_len))
                             for k in ("input_ids", "attention_mask"))

        def itm_logits(image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
            mask = all_mask[text_index]
            width = int(mask.sum(dim=1).max())
            return model(all_tokens[image_index], all_ids[text_index][:, :width], mask[:, :width],
                         task="itm_logits")

        ignore_text = all_gather_cat(empty) if empty is not None else None
        return itm_loss(itm_logits, local_rows, negatives, ignore_text)

    def after_optimizer_step(self, model: nn.Module) -> None:
        clamp_logit_scale_(model.logit_scale)

    # ---- evaluation and export ---------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        st = self.cfg.stage
        results: dict[str, float] = {}
        for eval_set in build_pair_eval_sets(self.cfg.data, self.dist.rank, self.dist.world_size).values():
            results.update(retrieval_metrics_on(eval_set, model, self.tokenizer, st, self._eval_batch(model)))
            if st.caption_eval_images and st.itg_weight:
                results.update(caption_metrics_on(eval_set, model, self.tokenizer, st, self._eval_batch(model)))
        log_results_tables(results, self.dist.rank)
        return results

    def _eval_batch(self, model: nn.Module) -> Any:
        return lambda batch: to_device(batch, self.dist.device, model_dtype(model))

    def export(self, model: nn.Module, out_dir: str) -> None:
        """Ours (save_pretrained + tokenizer) in out_dir, the official InternVL-14B layout in out_dir/official.
        LoRA adapters are merged into the exported weights. Tensors are cloned: under ZeRO-1/2 parameters are
        views of DeepSpeed's flat buffers, which safetensors refuses to save as shared storage."""
        from huggingface_hub import save_torch_state_dict

        state = merged_state_dict(model) if has_lora(model) else model.state_dict()
        state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        save_pretrained(model, out_dir, state=state)
        self.tokenizer.save_pretrained(out_dir)
        official = Path(out_dir) / OFFICIAL_EXPORT_DIR
        official.mkdir(parents=True, exist_ok=True)
        save_torch_state_dict(internvl14b.ours_to_official(state), official)
        log.info("exported InternVL-G to %s (official InternVL-14B layout in %s/)", out_dir, OFFICIAL_EXPORT_DIR)


def empty_text_length(tokenizer: Any, st: Any) -> int:
    """Token count of an empty caption's text (BOS + `caption_prefix` + EOS): a text that long has no caption.
    With the official LLaMA tokenizer this is the count the official forward hard-codes (5 for "summarize:")."""
    return int(prepare_caption_inputs(tokenizer, [""], st.caption_prefix, st.max_text_len)["attention_mask"].sum())


def _pad_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] -> [B, width] with zeros on the right (token ids: pad id 0; masks: 0), for equal-shape gathers."""
    return F.pad(tensor, (0, width - tensor.shape[1]))
