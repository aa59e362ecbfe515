"""Helpers of the stage-3 tests: the real Hydra composition of a tiny stage-3 run on the demo conversations.
A plain module (not conftest) so tests elsewhere import it unambiguously."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from internvl_train.app import CONFIG_DIR
from internvl_train.config import check_run_config, register_configs

# Small and fast: one 64 px tile per image (16 LLM tokens), two rows per micro-batch, few eval questions, the
# inline 2-layer LLM (no stage-1/2 export needed).
TINY_SFT = ["stage=sft", "logger=none", "model.chat.llm_from_text_tower=false", "trainer.max_steps=2",
            "trainer.micro_batch_size=2", "trainer.log_every=1", "trainer.save_every=0", "trainer.warmup_steps=1",
            "trainer.progress_bar=off",
            "model.chat.max_dynamic_patch=1", "data.sft.max_packed_tokens=768", "data.sft.num_workers=0",
            "stage.eval_max_questions=4", "stage.eval_batch_size=4", "stage.max_new_tokens=3"]


def compose_sft(run_dir: Path, overrides: Sequence[str] = (), tiny: bool = True) -> DictConfig:
    """The validated, resolved config of `python -m internvl_train <TINY_SFT> run_dir=... <overrides>`."""
    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*(TINY_SFT if tiny else ["stage=sft"]), f"run_dir={run_dir}",
                                           *overrides])
    check_run_config(cfg)
    OmegaConf.resolve(cfg)
    return cfg


def tiny_chat_model(run_dir: Path, overrides: Sequence[str] = ()):
    """(stage, model) of a tiny stage-3 run, untrained (scratch ViT, weights random but fixed by the seed)."""
    import torch

    from internvl_train.engine.stage_api import DistInfo
    from internvl_train.stages.sft import SftStage

    stage = SftStage(compose_sft(run_dir, ["stage.vision_init=scratch", *overrides]), DistInfo())
    torch.manual_seed(0)
    return stage, stage.build_model()
