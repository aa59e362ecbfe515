"""A tiny two-tower model with dropout, and a gloo process-group launcher, for the loss tests."""
from __future__ import annotations

import os
import socket
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from internvl_train.losses.itc import INIT_LOGIT_SCALE, scaled_logit_scale


class TinyTowers(nn.Module):
    def __init__(self, dim_in: int = 6, dim: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(dim_in, 8), nn.Dropout(dropout), nn.Tanh(), nn.Linear(8, dim))
        self.text = nn.Sequential(nn.Linear(dim_in, 8), nn.Dropout(dropout), nn.Tanh(), nn.Linear(8, dim))
        self.log_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))


def encode(model: TinyTowers, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = F.normalize(model.image(batch["x"]), dim=-1)
    text = F.normalize(model.text(batch["y"]), dim=-1)
    return image, text, scaled_logit_scale(model.log_scale)


def make_data(n: int, dim_in: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, dim_in, generator=g), "y": torch.randn(n, dim_in, generator=g)}


def make_model(dropout: float = 0.0, seed: int = 1) -> TinyTowers:
    torch.manual_seed(seed)
    return TinyTowers(dropout=dropout)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def average_grads_like_the_engine(model: nn.Module) -> None:
    """What DDP / DeepSpeed do at the boundary: all-reduce SUM then divide by the world size."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, world_size: int = 2, args: tuple = ()) -> None:
    """Run fn(rank, world_size, *args) on `world_size` gloo processes; raises if any rank fails."""
    mp.spawn(_entry, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True)
