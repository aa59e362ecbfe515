"""Stage schemas: the `stage` config group (configs/stage/<name>.yaml extends one of these).

Each stage's fields say what trains and how its losses are weighted; model sizes and data live in their own
groups. No torch import (validated before anything heavy is loaded).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from internvl_train.config import ConfigError, absolute_key, check_at_least, check_choice


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
        """Cross-group checks on the whole RunConfig (keys absolute), after every group validated itself."""


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

    def validate(self) -> None:
        super().validate()
        check_at_least("unlocked_vision_layers", self.unlocked_vision_layers, -1)
        check_at_least("unlocked_text_layers", self.unlocked_text_layers, -1)
        check_at_least("max_text_len", self.max_text_len, 1)

    def unused_config(self) -> tuple[str, ...]:
        return IMAGE_TEXT_STAGES_UNUSED


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
    lora_rank: int = 0  # LoRA on the inherited QLLaMA weights when > 0

    def validate(self) -> None:
        super().validate()
        weights = {"itc_weight": self.itc_weight, "itm_weight": self.itm_weight, "itg_weight": self.itg_weight}
        for key, weight in weights.items():
            check_at_least(key, weight, 0)
        if not any(weights.values()):
            raise ConfigError("itc_weight", "itc_weight, itm_weight and itg_weight are all 0: nothing to train")
        check_choice("itm_negatives", self.itm_negatives, ("hard", "random"))
        check_at_least("max_text_len", self.max_text_len, 1)
        check_at_least("lora_rank", self.lora_rank, 0)

    def unused_config(self) -> tuple[str, ...]:
        return IMAGE_TEXT_STAGES_UNUSED

    def validate_run(self, run: Any) -> None:
        """QLLaMA's three passes need custom attention masks and room for queries + caption tokens."""
        try:
            run.model.validate_qllama()
        except ConfigError as err:
            raise ConfigError(absolute_key("model", err.key), err.reason) from None


@dataclass
class SftStageConfig(StageConfig):
    """Stage 3: InternVL-Chat supervised fine-tuning through the MLP bridge; parts freezable separately."""

    name: str = "sft"
    freeze_vision: bool = True
    freeze_mlp: bool = False
    freeze_llm: bool = False
    unfreeze_vision_last_k: int = 0  # with freeze_vision: train the last k ViT layers anyway
    lora_llm_rank: int = 0
    lora_vision_rank: int = 0
    template: str = "internvl2_5"  # conversation template name

    def validate(self) -> None:
        super().validate()
        for key in ("unfreeze_vision_last_k", "lora_llm_rank", "lora_vision_rank"):
            check_at_least(key, getattr(self, key), 0)
        if not self.template:
            raise ConfigError("template", "must name a conversation template, e.g. internvl2_5")
        trains_something = (not (self.freeze_vision and self.freeze_mlp and self.freeze_llm)
                            or self.unfreeze_vision_last_k or self.lora_llm_rank or self.lora_vision_rank)
        if not trains_something:
            raise ConfigError("freeze_llm", "vision, MLP and LLM are all frozen and no LoRA is set: nothing to train")

    def validate_run(self, run: Any) -> None:
        """Stage 3 needs a chat model, and it and the conversations must speak the stage's template."""
        sft_data = run.data.sft
        if run.model.chat is None:
            raise ConfigError("model.chat", "stage=sft needs a chat model: pick a model option that sets chat")
        templates = {"stage.template": self.template, "data.sft.template": sft_data.template,
                     "model.chat.template": run.model.chat.template}
        if len(set(templates.values())) > 1:
            raise ConfigError("stage.template", "conversation templates disagree: " +
                              ", ".join(f"{key}={value}" for key, value in templates.items()))
