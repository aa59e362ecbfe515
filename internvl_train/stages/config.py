"""Stage schemas: the `stage` config group (configs/stage/<name>.yaml extends one of these).

Each stage's fields say what trains and how its losses are weighted; model sizes and data live in their own
groups. No torch import (validated before anything heavy is loaded).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from internvl_train.errors import ConfigError, check_at_least, check_choice, qualified
from internvl_train.models.tokenizer import first_tokenizer_dir


# Stages 1 and 2 read image-text pairs: the chat model and the SFT conversations are not theirs to check.
IMAGE_TEXT_STAGES_UNUSED = ("model.chat", "data.sft")


@dataclass
class StageConfig:
    """Base of every stage schema; `name` selects the Stage class (internvl_train.stages registry)."""

    name: str = MISSING

    def validate(self) -> None:
        from internvl_train.stages import STAGE_CLASSES

        check_choice("name", self.name, STAGE_CLASSES)
        own_name = {f.name: f.default for f in dataclasses.fields(self)}["name"]
        if own_name != MISSING and self.name != own_name:
            raise ConfigError("name", f"{self.name!r} does not match this {type(self).__name__} "
                                      f"({own_name!r}); pick the stage with stage={self.name}")

    def unused_config(self) -> tuple[str, ...]:
        """Config subtrees this stage never reads: they are not validated (stage 1 needs no SFT source)."""
        return ()

    def validate_run(self, run: Any) -> None:
        """Cross-group checks on the whole RunConfig, after every group validated itself. Keys are relative to
        the root (i.e. full paths); a sub-node's validator called here is qualified with its path."""


@dataclass
class ContrastiveStageConfig(StageConfig):
    """Stage 1: InternViT + LLaMA text tower trained with the image-text contrastive loss (ITC)."""

    name: str = "contrastive"
    lock_vision: bool = False
    lock_text: bool = False
    unlocked_vision_layers: int = -1  # with lock_vision: train only the last k layers; -1 = all locked
    unlocked_text_layers: int = -1  # with lock_text: same for the text tower
    caption_prefix: str = "summarize:"
    max_text_len: int = 80
    contrastive_accumulation: bool = True  # embedding-cache accumulation when grad_accum_steps > 1
    # Next-token loss on the caption tokens of the same text pass, added with this weight. It keeps a text tower
    # that starts random a language model (stage 2's ITG inherits it; the paper's LLaMA-7B arrives pretrained).
    # null: 1.0 when the text tower starts random (no init_from / model.pretrained / model.text.pretrained), else 0.
    text_lm_weight: Optional[float] = None

    def validate(self) -> None:
        super().validate()
        check_at_least("unlocked_vision_layers", self.unlocked_vision_layers, -1)
        check_at_least("unlocked_text_layers", self.unlocked_text_layers, -1)
        check_at_least("max_text_len", self.max_text_len, 1)
        if self.text_lm_weight is not None:
            check_at_least("text_lm_weight", self.text_lm_weight, 0)

    def unused_config(self) -> tuple[str, ...]:
        return IMAGE_TEXT_STAGES_UNUSED

    def validate_run(self, run: Any) -> None:
        with qualified("data"):
            run.data.validate_pair_sources(training=run.mode == "train")
        tokenizer_source(run, run.init_from)


@dataclass
class GenerativeStageConfig(StageConfig):
    """Stage 2: QLLaMA (stage-1 LLaMA + learnable queries + cross-attention) with ITC + ITM + ITG."""

    name: str = "generative"
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    itg_weight: float = 1.0
    itm_negatives: str = "hard"  # hard (sampled by ITC similarity) | random
    itg_prefix: str = "English caption:"
    caption_prefix: str = "summarize:"
    max_text_len: int = 80
    # As the official InternVL-G forward: an empty caption (its text is the prefix alone) has no ITC target and
    # its ITM pairs no label. False keeps such rows as ordinary samples.
    ignore_empty_text: bool = True
    # The paper freezes the inherited QLLaMA weights (False). True trains them too (self-attention, MLP, norms,
    # embeddings, LM head): the demo default, because a frozen 0.3M-parameter LM cannot be steered by queries
    # the way the paper's 8B one can (docs/stage2.md has the measurement).
    train_qllama: bool = False
    lora_rank: int = 0  # LoRA on the inherited QLLaMA weights when > 0
    lora_alpha: float = 16.0
    # weights when init_from, model.pretrained and the towers' pretrained are all null: the demo stage-1 run
    default_init_from: str = "runs/contrastive/export"
    caption_max_new_tokens: int = 32  # greedy caption decoding at evaluation
    caption_eval_images: int = 200  # held-out images captioned per eval set (0 = none, skips captioning)
    itm_rerank_k: int = 0  # > 0: also report G retrieval with the top-k re-ranked by the ITM head

    def validate(self) -> None:
        super().validate()
        for key in ("caption_max_new_tokens", "caption_eval_images", "itm_rerank_k"):
            check_at_least(key, getattr(self, key), 0)
        if self.lora_alpha <= 0:
            raise ConfigError("lora_alpha", f"got {self.lora_alpha}, must be > 0")
        if not self.default_init_from:
            raise ConfigError("default_init_from", "must name the stage-1 export used when init_from is null")
        weights = {"itc_weight": self.itc_weight, "itm_weight": self.itm_weight, "itg_weight": self.itg_weight}
        for key, weight in weights.items():
            check_at_least(key, weight, 0)
        if not any(weights.values()):
            raise ConfigError("itc_weight", "itc_weight, itm_weight and itg_weight are all 0: nothing to train")
        check_choice("itm_negatives", self.itm_negatives, ("hard", "random"))
        check_at_least("max_text_len", self.max_text_len, 1)
        check_at_least("lora_rank", self.lora_rank, 0)
        if self.train_qllama and self.lora_rank:
            raise ConfigError("lora_rank", f"is {self.lora_rank} while train_qllama is true: the inherited QLLaMA "
                                           "weights train in full already; set stage.lora_rank=0 or "
                                           "stage.train_qllama=false")

    def unused_config(self) -> tuple[str, ...]:
        return IMAGE_TEXT_STAGES_UNUSED

    def validate_run(self, run: Any) -> None:
        """QLLaMA's three passes need custom attention masks and room for queries + caption tokens; the
        weights to start from must exist (init_from, else an official checkpoint, else default_init_from)."""
        with qualified("data"):
            run.data.validate_pair_sources(training=run.mode == "train")
        with qualified("model"):
            run.model.validate_qllama()
        path = generative_init_from(run)
        if path is not None and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError("init_from", f"null, and the default stage-1 export {path!r} does not exist: run "
                                           "stage 1 first (python -m internvl_train stage=contrastive) or set "
                                           "init_from=<a stage-1 export directory>")
        tokenizer_source(run, path)


RANDOM_TEXT_TOWER_LM_WEIGHT = 1.0


def resolved_text_lm_weight(run: Any) -> float:
    """Stage 1's text LM weight: `stage.text_lm_weight`, or when null RANDOM_TEXT_TOWER_LM_WEIGHT for a text
    tower that starts from random weights and 0 for one that starts from a checkpoint (already a LM)."""
    if run.stage.text_lm_weight is not None:
        return float(run.stage.text_lm_weight)
    starts_random = not (run.init_from or run.model.pretrained or run.model.text.pretrained)
    return RANDOM_TEXT_TOWER_LM_WEIGHT if starts_random else 0.0


def tokenizer_source(run: Any, init_from: Optional[str]) -> Optional[str]:
    """Where a stage-1/2 run's tokenizer comes from, first that exists: model.text.tokenizer, the `init_from`
    export (every stage exports its tokenizer next to its weights), model.text.pretrained; None = the demo
    tokenizer (data.demo). Torch-free, so the config gate names a missing one before anything is built."""
    text = run.model.text
    path = first_tokenizer_dir((text.tokenizer, init_from, text.pretrained))
    if path is not None:
        return path
    if text.tokenizer:
        raise ConfigError("model.text.tokenizer", f"{text.tokenizer!r} has no tokenizer_config.json: point it "
                                                  "at a Hugging Face tokenizer directory")
    if run.data.demo:
        return None
    raise ConfigError("model.text.tokenizer", "null, and neither init_from nor model.text.pretrained ships a "
                                              "tokenizer: set model.text.tokenizer=<HF tokenizer dir> (the demo "
                                              "tokenizer serves data=demo only)")


def generative_init_from(run: Any) -> Optional[str]:
    """Where stage 2 takes its weights: `init_from` when set; None when model.pretrained or a tower's
    `pretrained` names official weights (the model builder loads those); else `stage.default_init_from`."""
    if run.init_from:
        return run.init_from
    model = run.model
    if model.pretrained or model.vision.pretrained or model.text.pretrained:
        return None
    return run.stage.default_init_from


DEFAULT_PREVIOUS_EXPORTS = ["runs/generative/export", "runs/contrastive/export"]
VISION_INITS = ("previous", "scratch")


@dataclass
class SftStageConfig(StageConfig):
    """Stage 3: InternVL-Chat supervised fine-tuning through the MLP bridge; parts freezable separately.

    The ViT comes from `init_from` (a stage-1/2 export or a chat checkpoint), else `model.vision.pretrained`,
    else the first existing directory of `previous_exports` (the demo pipeline's stage-2 then stage-1
    export); `vision_init=scratch` starts from a random ViT instead (the ablation of stages 1-2).
    The conversation template is the chat model's: `model.chat.template`."""

    name: str = "sft"
    freeze_vision: bool = True
    freeze_mlp: bool = False
    freeze_llm: bool = False
    unfreeze_vision_last_k: int = 0  # with freeze_vision: train the last k ViT layers anyway
    lora_llm_rank: int = 0  # LoRA adapters on the (frozen) LLM when > 0
    lora_vision_rank: int = 0  # LoRA adapters on the (frozen) ViT when > 0
    lora_alpha_ratio: float = 2.0  # lora_alpha = ratio x rank (the official scripts use 2r)
    lora_dropout: float = 0.05
    vision_init: str = "previous"  # previous | scratch
    previous_exports: List[str] = field(default_factory=lambda: list(DEFAULT_PREVIOUS_EXPORTS))
    eval_max_questions: int = 0  # held-out VQA questions evaluated; 0 = all
    eval_batch_size: int = 16  # questions per generate() call
    max_new_tokens: int = 16  # answer length cap at evaluation (short-answer VQA)

    def validate(self) -> None:
        super().validate()
        for key in ("unfreeze_vision_last_k", "lora_llm_rank", "lora_vision_rank", "eval_max_questions"):
            check_at_least(key, getattr(self, key), 0)
        for key in ("eval_batch_size", "max_new_tokens"):
            check_at_least(key, getattr(self, key), 1)
        check_at_least("lora_alpha_ratio", self.lora_alpha_ratio, 0)
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        check_choice("vision_init", self.vision_init, VISION_INITS)
        if self.unfreeze_vision_last_k and not self.freeze_vision:
            raise ConfigError("unfreeze_vision_last_k", "only meaningful with freeze_vision=true (the whole ViT "
                                                        "trains otherwise)")
        for rank_key, freeze_key in (("lora_llm_rank", "freeze_llm"), ("lora_vision_rank", "freeze_vision")):
            if getattr(self, rank_key) and not getattr(self, freeze_key):
                raise ConfigError(rank_key, f"LoRA trains adapters on frozen weights: set stage.{freeze_key}=true")
        trains_something = (not (self.freeze_vision and self.freeze_mlp and self.freeze_llm)
                            or self.unfreeze_vision_last_k or self.lora_llm_rank or self.lora_vision_rank)
        if not trains_something:
            raise ConfigError("freeze_llm", "vision, MLP and LLM are all frozen and no LoRA is set: nothing to train")

    def validate_run(self, run: Any) -> None:
        """Stage 3 needs a chat model; a scratch ViT excludes init_from."""
        if run.model.chat is None:
            raise ConfigError("model.chat", "stage=sft needs a chat model: pick a model option that sets chat "
                                            "(e.g. model=chat_tiny)")
        llm_path = run.model.chat.llm_path
        if llm_path and not os.path.isfile(os.path.join(os.path.expanduser(llm_path), "config.json")):
            raise ConfigError("model.chat.llm_path", f"{llm_path!r} is not a Hugging Face model directory (no "
                                                     "config.json): point it at a local causal-LM checkpoint")
        if self.vision_init == "scratch" and (run.init_from or run.model.vision.pretrained):
            raise ConfigError("stage.vision_init", "scratch builds a random ViT: unset init_from and "
                                                   "model.vision.pretrained, or use vision_init=previous")
