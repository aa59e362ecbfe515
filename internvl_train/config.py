"""Structured configs: the root `RunConfig` and the trainer, deepspeed and logger groups.

Types and defaults live in these dataclasses. Hydra rejects unknown keys and wrong types while it composes;
`validate()` rejects what Hydra cannot see (ranges, choices, paths). `check_run_config` runs every validate()
in the tree, then the stage's cross-group checks, before anything heavy is imported. This module must not
import torch: it is the fast gate.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from internvl_train.errors import ConfigError, check_at_least, check_choice, check_existing_path, qualified


@dataclass
class TrainerConfig:
    """The optimisation loop: steps, batch, precision, AdamW + schedule, logging and checkpoint cadence."""

    max_steps: int = 300  # the embedded demo of stages 1 and 2: about a minute each on 2 CPU cores
    micro_batch_size: int = 32
    grad_accum_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16
    grad_clip: float = 1.0  # 0 disables
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | constant
    lr_multipliers: Dict[str, float] = field(default_factory=dict)  # param-name prefix -> lr multiplier
    log_every: int = 10
    save_every: int = 50  # 0 = no periodic checkpoints (the end of the run and preemption still save)
    keep_last: int = 2
    eval_every: int = 0  # 0 = evaluate only at the end
    max_nonfinite_steps: int = 5  # consecutive non-finite steps before the run stops
    progress_bar: str = "auto"  # auto (tty only) | on | off
    peak_tflops_per_device: float = 0.0  # 0 = auto for known GPUs; MFU omitted when unknown
    dist_timeout_s: int = 1800

    def validate(self) -> None:
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "log_every", "keep_last",
                    "max_nonfinite_steps", "dist_timeout_s"):
            check_at_least(key, getattr(self, key), 1)
        for key in ("grad_clip", "weight_decay", "warmup_steps", "save_every", "eval_every",
                    "peak_tflops_per_device"):
            check_at_least(key, getattr(self, key), 0)
        check_choice("precision", self.precision, ("fp32", "bf16"))
        check_choice("schedule", self.schedule, ("cosine", "constant"))
        check_choice("progress_bar", self.progress_bar, ("auto", "on", "off"))
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError("lr" if self.lr <= 0 else "eps", "must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("min_lr_ratio", f"got {self.min_lr_ratio}, must be in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("betas", f"got {self.betas}, expected two values in [0, 1), e.g. [0.9, 0.98]")
        for prefix, mult in self.lr_multipliers.items():
            check_at_least(f"lr_multipliers.{prefix}", mult, 0)


@dataclass
class DeepSpeedConfig:
    """ZeRO settings; the engine turns them into DeepSpeed's JSON config."""

    zero_stage: int = 0
    offload_optimizer: str = "none"  # none | cpu
    offload_param: str = "none"  # none | cpu (ZeRO-3 only)
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 50_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_param_persistence_threshold: int = 100_000
    extra: Dict[str, Any] = field(default_factory=dict)  # merged verbatim into the DeepSpeed JSON

    def validate(self) -> None:
        check_choice("zero_stage", self.zero_stage, (0, 1, 2, 3))
        check_choice("offload_optimizer", self.offload_optimizer, ("none", "cpu"))
        check_choice("offload_param", self.offload_param, ("none", "cpu"))
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ConfigError("offload_optimizer", "needs zero_stage >= 1 (e.g. deepspeed=zero2_offload)")
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ConfigError("offload_param", "needs zero_stage=3 (e.g. deepspeed=zero3_offload)")
        for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size"):
            check_at_least(key, getattr(self, key), 1)
        check_at_least("stage3_param_persistence_threshold", self.stage3_param_persistence_threshold, 0)


@dataclass
class LoggerConfig:
    """Experiment tracking (Weights & Biases) and its mode."""

    backend: str = "wandb"  # wandb | none
    project: str = "internvl-train"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online when an API key or netrc login exists, else offline) | online | offline
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def validate(self) -> None:
        check_choice("backend", self.backend, ("wandb", "none"))
        check_choice("mode", self.mode, ("auto", "online", "offline"))
        if not self.project:
            raise ConfigError("project", "must not be empty")


@dataclass
class RunConfig:
    """The root: one option per group plus the run's identity (where, from what, how to resume)."""

    stage: Any = MISSING  # a StageConfig subclass (internvl_train/stages/config.py)
    model: Any = MISSING  # ModelConfig (internvl_train/models/config.py)
    data: Any = MISSING  # DataConfig (data_pipelines/config.py)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_dir: str = "runs/${stage.name}"
    seed: int = 0
    resume: str = "auto"  # auto | never | <checkpoint dir>
    init_from: Optional[str] = None  # weights only, e.g. runs/contrastive/export
    mode: str = "train"  # train | eval

    def validate(self) -> None:
        check_choice("mode", self.mode, ("train", "eval"))
        check_at_least("seed", self.seed, 0)
        if not self.run_dir:
            raise ConfigError("run_dir", "must not be empty")
        if self.resume not in ("auto", "never"):
            check_existing_path("resume", self.resume, "use auto, never or a checkpoint directory")
        if self.init_from is not None:
            check_existing_path("init_from", self.init_from,
                                "pass a previous stage's export, e.g. init_from=runs/contrastive/export")
        if self.mode == "eval" and self.init_from is None and self.resume == "never":
            raise ConfigError("mode", "eval needs weights: set init_from=<export dir> or resume=auto|<dir>")


def _group_schemas() -> dict[str, type]:
    """Group name -> the dataclass every option of that group must extend (imported lazily)."""
    from data_pipelines.config import DataConfig
    from internvl_train.models.config import ModelConfig
    from internvl_train.stages.config import StageConfig

    return {"stage": StageConfig, "model": ModelConfig, "data": DataConfig}


def _check_group_types(run: RunConfig) -> None:
    for group, schema in _group_schemas().items():
        value = getattr(run, group)
        if not isinstance(value, schema):
            raise ConfigError(group, f"expected a {schema.__name__}, got {type(value).__name__}; every option "
                                     f"in configs/{group}/ must start its defaults list with its schema "
                                     "(e.g. /schema/model@_here_, /schema/stage/sft@_here_)")


def register_configs() -> None:
    """Store the root schema and every group schema in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from data_pipelines.config import DataConfig
    from internvl_train.models.config import ModelConfig
    from internvl_train.stages.config import (ContrastiveStageConfig, GenerativeStageConfig,
                                              SftStageConfig)

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    # Under schema/, not in the groups themselves: a schema is not an option (`stage=sft_schema` would select
    # it and Hydra would list it among a group's choices). Options extend one with `/schema/<path>@_here_`.
    for path, node in (
        ("stage/contrastive", ContrastiveStageConfig),
        ("stage/generative", GenerativeStageConfig),
        ("stage/sft", SftStageConfig),
        ("model", ModelConfig),
        ("data", DataConfig),
        ("trainer", TrainerConfig),
        ("deepspeed", DeepSpeedConfig),
        ("logger", LoggerConfig),
    ):
        group, _, name = f"schema/{path}".rpartition("/")
        cs.store(group=group, name=name, node=node)


def check_run_config(cfg: DictConfig) -> RunConfig:
    """Convert the composed config to dataclasses and run every validate(); raise ConfigError (full key)."""
    from internvl_train.config_keys import check_known_keys

    check_known_keys(cfg)  # before to_object, which would drop a `+key` silently
    if cfg.mode == "eval":
        _drop_unset_training_sources(cfg)
    try:
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(getattr(err, "full_key", None) or "<root>", _first_line(err)) from None
    if not isinstance(run, RunConfig):
        raise ConfigError("<root>", f"expected RunConfig, got {type(run).__name__}; config.yaml must start "
                                    "its defaults list with run_schema")
    _check_group_types(run)
    _validate_tree(run, "", skip=frozenset(run.stage.unused_config()))
    run.stage.validate_run(run)  # cross-group checks: the stage knows what it needs from model and data
    return run


def _drop_unset_training_sources(cfg: DictConfig) -> None:
    """mode=eval reads no training shards: a data option's placeholder `urls: ???` must not be demanded."""
    sources = OmegaConf.select(cfg, "data.sources")
    if sources is not None and not OmegaConf.is_missing(cfg.data, "sources"):
        cfg.data.sources = [s for s in sources if not OmegaConf.is_missing(s, "urls")]


def _validate_tree(node: Any, path: str, skip: frozenset[str]) -> None:
    """Call validate() on every dataclass in the tree, parent before children, qualifying each node-relative
    key with the node's path (internvl_train.errors has the rule).

    Each validate() checks its own node only; subtrees the stage never reads (`skip`) are not checked,
    and what a stage needs from the other groups belongs in its `validate_run`."""
    if path in skip:
        return
    if dataclasses.is_dataclass(node):
        if hasattr(node, "validate"):
            with qualified(path):
                node.validate()
        for f in dataclasses.fields(node):
            _validate_tree(getattr(node, f.name), f"{path}.{f.name}" if path else f.name, skip)
    elif isinstance(node, (list, tuple)):
        for i, child in enumerate(node):
            _validate_tree(child, f"{path}[{i}]", skip)
    elif isinstance(node, dict):
        for key, child in node.items():
            _validate_tree(child, f"{path}.{key}", skip)


def _first_line(err: Exception) -> str:
    message = getattr(err, "msg", None) or str(err)
    return message.strip().splitlines()[0]


def write_resolved_config(cfg: DictConfig, path: Path, command: str) -> None:
    """Write the fully resolved config atomically, headed by a comment with the command that made it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(f"# {command}\n" + OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
