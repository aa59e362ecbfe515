"""Small torch.distributed helpers shared by the losses and the metrics.

Every helper is a no-op (returns its input) when torch.distributed is not initialised or has one rank,
so the same code runs in a single CPU process and on a cluster.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every rank) over ranks along dim 0, rank-major; no gradient."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_gather_cat_uneven(tensor: torch.Tensor) -> torch.Tensor:
    """Like all_gather_cat, but the first dimension may differ between ranks (evaluation shards)."""
    if world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = all_gather_cat(size).tolist()
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather_cat(padded)
    return torch.cat([gathered[r * longest : r * longest + n] for r, n in enumerate(sizes)], dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor; the input is left unchanged)."""
    out = tensor.clone()
    if world_size() > 1:
        dist.all_reduce(out)
    return out


def check_same_size_on_all_ranks(n: int, what: str, device: torch.device | str = "cpu") -> None:
    """Raise a clear error when ranks disagree on a batch size that a collective needs to be equal."""
    if world_size() == 1:
        return
    sizes = all_gather_cat(torch.tensor([n], device=device, dtype=torch.long)).tolist()
    if len(set(sizes)) != 1:
        raise ValueError(
            f"{what}: every rank must hold the same number of samples for the gather, got {sizes} "
            "per rank; drop the last partial batch (webdataset: .batched(partial=False)) or use "
            "equal micro-batch sizes on every rank."
        )
