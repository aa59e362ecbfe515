"""`torchrun --nproc_per_node W generative_two_ranks.py <stage-1 export> <out.pt>`: one stage-2 step of ITC + ITM
on a fixed global batch of 4 split over W gloo ranks. Rank 0 saves the rank-averaged losses and gradients
(what DeepSpeed applies) for comparison across W."""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from generative_helpers import compose_run
from internvl_train.engine.distributed import init_distributed
from internvl_train.engine.freeze import freeze_modules
from internvl_train.stages.generative import GenerativeStage

CAPTIONS = ["a small red circle in the top left", "a large blue square in the center",
            "there is a small green cross in the bottom right", "a yellow triangle, large, at the top right"]


def main(export: str, out: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed(60)
    stage = GenerativeStage(compose_run(["stage=generative", f"init_from={export}", "stage.itg_weight=0"]), info)
    torch.manual_seed(0)
    model = stage.build_model()
    freeze_modules(stage.frozen_modules(model))
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    per_rank = 4 // info.world_size
    rows = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    batch = {"pixel_values": pixels[rows], "captions": CAPTIONS[rows], "keys": [f"k{i}" for i in range(4)][rows]}
    losses = stage.compute_losses(model, batch)
    losses["loss"].backward()
    result = {k: losses[k].detach().clone() for k in ("itc", "itm", "itm_skipped")}
    result.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for value in result.values():
        dist.all_reduce(value)
        value /= info.world_size
    if info.rank == 0:
        torch.save(result, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
