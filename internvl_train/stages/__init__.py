"""Stage registry: `stage.name` -> the Stage class, imported only when asked for (keeps config checks fast)."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from internvl_train.engine.stage_api import Stage

STAGE_CLASSES: dict[str, str] = {
    "contrastive": "internvl_train.stages.contrastive:ContrastiveStage",
    "generative": "internvl_train.stages.generative:GenerativeStage",
    "sft": "internvl_train.stages.sft:SftStage",
}


def get_stage_class(name: str) -> type[Stage]:
    """The Stage subclass registered under `name`; ValueError naming the allowed names otherwise."""
    if name not in STAGE_CLASSES:
        raise ValueError(f"unknown stage {name!r}; choose one of: {', '.join(STAGE_CLASSES)}")
    module_name, class_name = STAGE_CLASSES[name].split(":")
    return getattr(import_module(module_name), class_name)
