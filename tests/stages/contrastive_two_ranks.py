"""Worker of test_stage_loss_gradient_is_the_same_on_two_ranks_as_on_one (run under torchrun, 2 ranks)."""
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from contrastive_helpers import flat_grads, slice_batch, stage1_cfg
from internvl_train.engine.stage_api import DistInfo
from internvl_train.stages.contrastive import ContrastiveStage

root = Path(sys.argv[1])
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = stage1_cfg(root)
torch.manual_seed(cfg.seed)
stage = ContrastiveStage(cfg, DistInfo(rank=rank, world_size=world))
model = stage.build_model()
batch = torch.load(root / "batch.pt", weights_only=False)
half = batch["pixel_values"].shape[0] // world
stage.compute_losses(model, slice_batch(batch, slice(rank * half, (rank + 1) * half)))["loss"].backward()
grads = flat_grads(model)
for g in grads.values():  # what DDP / DeepSpeed do with gradients: average over ranks
    dist.all_reduce(g)
    g /= world
if rank == 0:
    torch.save(grads, root / "grads_rank0.pt")
dist.destroy_process_group()
