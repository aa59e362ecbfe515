"""The contract between the trainer (engine/) and a training stage.

A stage reads top to bottom: what model, what is trainable, how a batch becomes a dict of named losses,
how it is evaluated and exported. The trainer knows stages only through this interface; stages know
nothing of ranks beyond what `DistInfo` tells them, and never call torch.distributed for the loop.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (filled by engine.distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"


class StatefulLoader(Protocol):
    """An endless stream of micro-batches whose position can be saved and restored exactly."""

    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def metrics(self) -> dict[str, float]:
        """Counters to log, e.g. {'data/skipped/corrupt_image': 3, 'data/epoch': 1}."""
        ...


class Stage(ABC):
    """One stage of progressive alignment. Subclasses live in internvl_train/stages/<name>.py."""

    name: str

    def __init__(self, cfg: Any, dist: DistInfo):
        self.cfg = cfg  # the whole resolved RunConfig (OmegaConf DictConfig, validated)
        self.dist = dist

    # ---- model -------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """Build the model (the engine calls this inside deepspeed.zero.Init under ZeRO-3).

        Loads `cfg.init_from` weights when set; creates only what is new and logs it."""

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules that do not train. The engine sets requires_grad=False and keeps them in eval mode
        (drop-path/dropout off) for the whole run."""
        return []

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Extra no-decay names beyond the engine's rule (norms, biases, scalars already excluded)."""
        return False

    # ---- data --------------------------------------------------------------------------------
    @abstractmethod
    def build_train_loader(self) -> StatefulLoader:
        """Micro-batches of size cfg.trainer.micro_batch_size for this rank."""

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        """(samples, tokens) in a micro-batch, for throughput and the data-position counter."""
        ids = batch.get("input_ids")
        n = len(batch["pixel_values"]) if "pixel_values" in batch else len(ids)
        return n, int(ids.numel()) if isinstance(ids, torch.Tensor) else 0

    # ---- step --------------------------------------------------------------------------------
    @abstractmethod
    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Named losses for one micro-batch; key 'loss' is the total that is back-propagated."""

    def train_step(self, engine: Any, micro_batches: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """One optimizer step over `micro_batches` (len == gradient accumulation steps).

        Default: forward/backward each micro-batch through the DeepSpeed engine, which accumulates and
        steps at the boundary. Contrastive stages override this (a contrastive loss does not sum over
        micro-batches). Returns the losses averaged over micro-batches (detached)."""
        totals: dict[str, torch.Tensor] = {}
        for batch in micro_batches:
            losses = self.compute_losses(engine.module, batch)
            engine.backward(losses["loss"])
            engine.step()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro_batches)
        return totals

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (e.g. clamp logit_scale)."""

    # ---- evaluation and export ---------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on the held-out set(s); called on every rank, returns the same dict everywhere."""
        return {}

    def export(self, model: nn.Module, out_dir: str) -> None:
        """Write the stage's result (rank 0 writes; weights gathered by the engine under ZeRO-3)."""

    def flops_per_sample(self) -> float:
        """Model training FLOPs per sample (forward + backward) for MFU; 0 when unknown."""
        return 0.0
