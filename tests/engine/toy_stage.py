"""A tiny stage for engine tests: a small MLP regression with a frozen encoder, dropout, a LayerNorm,
learnable query tokens and a scalar logit_scale, fed by a deterministic in-memory stateful loader."""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Iterator, Mapping

import torch
from omegaconf import OmegaConf
from torch import nn

from internvl_train.engine.stage_api import Stage

IN_DIM, HIDDEN = 8, 16
DATASET_SIZE = 4096
# Fault injection (0-based optimizer step indices, comma separated).
NAN_STEPS_ENV, NAN_RANK_ENV = "TOY_NAN_STEPS", "TOY_NAN_RANK"
SIGNAL_STEP_ENV, SLEEP_ENV = "TOY_SIGNAL_STEP", "TOY_STEP_SLEEP_S"


def env_ints(name: str) -> set[int]:
    return {int(v) for v in os.environ.get(name, "").split(",") if v.strip()}


class ToyModel(nn.Module):
    def __init__(self, dropout: float):
        super().__init__()
        self.frozen_enc = nn.Sequential(nn.Linear(IN_DIM, IN_DIM), nn.Dropout(0.5))
        self.body = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.LayerNorm(HIDDEN), nn.GELU(), nn.Dropout(dropout))
        self.query_tokens = nn.Parameter(torch.randn(1, 2, HIDDEN) * 0.02)
        self.head = nn.Linear(HIDDEN, 1)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.frozen_enc(x)) + self.query_tokens.mean(1)
        return self.head(h).squeeze(-1) * self.logit_scale


class ToyLoader:
    """Micro-batch k of rank r holds samples ((k*world + r)*B ... +B) mod N: the global batch of a step is
    the same for any world size / accumulation split with the same global batch size."""

    def __init__(self, batch_size: int, rank: int, world: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(DATASET_SIZE, IN_DIM, generator=gen)
        self.y = self.x @ torch.randn(IN_DIM, generator=gen)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.k = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            start = (self.k * self.world + self.rank) * self.batch_size
            idx = torch.arange(start, start + self.batch_size) % DATASET_SIZE
            batch = {"x": self.x[idx], "y": self.y[idx], "micro_index": self.k,
                     "input_ids": torch.zeros(self.batch_size, 3, dtype=torch.long)}
            self.k += 1  # before yielding: state_dict() must count the batches already handed out
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.k = int(state["k"])

    def metrics(self) -> dict[str, float]:
        return {"data/skipped/toy": 1.0, "data/micro_batches": float(self.k)}


class ToyStage(Stage):
    name = "toy"

    def build_model(self) -> nn.Module:
        return ToyModel(self.cfg.stage.dropout)

    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.frozen_enc]

    def build_train_loader(self) -> ToyLoader:
        return ToyLoader(self.cfg.trainer.micro_batch_size, self.dist.rank, self.dist.world_size, self.cfg.seed)

    def batch_size_and_tokens(self, batch: Mapping[str, Any]) -> tuple[int, int]:
        return len(batch["x"]), int(batch["input_ids"].numel())

    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred = model(batch["x"].to(next(model.parameters()).dtype))  # bf16 runs: inputs in the model dtype
        mse = (pred.float() - batch["y"]).pow(2).mean()
        self.inject_faults(batch["micro_index"])
        if batch["micro_index"] // self.cfg.trainer.grad_accum_steps in env_ints(NAN_STEPS_ENV) \
                and self.dist.rank == int(os.environ.get(NAN_RANK_ENV, 0)):
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse.detach(), "abs_err": (pred.float() - batch["y"]).abs().mean().detach()}

    def inject_faults(self, micro_index: int) -> None:
        """Test faults, from env vars so they stay out of the config (and its resume hash)."""
        gas = self.cfg.trainer.grad_accum_steps
        if micro_index % gas == 0 and micro_index // gas in env_ints(SIGNAL_STEP_ENV) and self.dist.rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(float(os.environ.get(SLEEP_ENV, 0)))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        loader = ToyLoader(64, 0, 1, self.cfg.seed + 1)
        batch = next(iter(loader))
        pred = model(batch["x"].to(next(model.parameters()).dtype)).float()
        return {"val_mse": float((pred - batch["y"]).pow(2).mean())}

    def export(self, model: nn.Module, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out_dir, "model.pt"))

    def flops_per_sample(self) -> float:
        return 6.0 * (IN_DIM * HIDDEN + HIDDEN)


def make_cfg(run_dir: str, **overrides: Any) -> Any:
    """The config fields the engine reads (CONFIG_FIELDS.md), with tiny values."""
    base = {
        "run_dir": run_dir, "seed": 0, "resume": "auto", "init_from": None, "mode": "train",
        "stage": {"name": "toy", "dropout": 0.1},
        "trainer": {"max_steps": 6, "micro_batch_size": 4, "grad_accum_steps": 1, "precision": "fp32",
                    "grad_clip": 1.0, "lr": 1e-2, "min_lr_ratio": 0.1, "weight_decay": 0.05,
                    "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 2, "schedule": "cosine",
                    "lr_multipliers": {"head.": 0.5}, "log_every": 1, "save_every": 3, "keep_last": 2,
                    "eval_every": 0, "max_nonfinite_steps": 3, "progress_bar": "off",
                    "peak_tflops_per_device": 0.0, "dist_timeout_s": 120},
        "deepspeed": {"zero_stage": 0, "offload_optimizer": "none", "offload_param": "none",
                      "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 50000000,
                      "stage3_prefetch_bucket_size": 50000000, "stage3_param_persistence_threshold": 100000,
                      "extra": {}},
        "logger": {"backend": "none", "project": "internvl-train-tests", "entity": None, "mode": "offline",
                   "name": None, "tags": []},
    }
    cfg = OmegaConf.create(base)
    for dotted, value in overrides.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value, merge=False)
    return cfg
