"""The collectives of the trainer, the stages and the evaluation: one home.

Every helper is a no-op (returns its input, or a copy) when torch.distributed is not initialised or has one
rank, so the same code runs in a single CPU process and on a cluster. Tensors travel on the device the
backend needs (comm_device: CUDA for nccl) and come back on the caller's device.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def comm_device() -> torch.device:
    """Device a collective's tensor must live on for the active backend."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    """Sum over ranks: a new tensor of the input's dtype on the input's device (the input is left unchanged)."""
    out = tensor.detach().clone()
    if world_size() > 1:
        moved = out.to(comm_device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        out = moved.to(tensor.device)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: object) -> list[object]:
    if not is_dist():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
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
