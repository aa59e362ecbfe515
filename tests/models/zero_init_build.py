"""Build InternVL-G inside deepspeed.zero.Init (one gloo rank) and print facts the test checks."""
from __future__ import annotations

import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))
os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")

import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402
from internvl_tiny import tiny_config  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from internvl_train.models.weights import load_state_into  # noqa: E402
from internvl_train.models.internvl_c.modeling import InternVLC  # noqa: E402
from internvl_train.models.internvl_g.modeling import NEW_IN_G, InternVLG  # noqa: E402

dist.init_process_group("gloo", rank=0, world_size=1)
stage1 = InternVLC(tiny_config())  # built normally, then loaded into a partitioned stage-2 model
ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
hf_switch = HfDeepSpeedConfig(ds_config)  # transformers' ZeRO-3 switch, kept alive while building
with deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=torch.float32):
    model = InternVLG(tiny_config())
partitioned = all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())
report = load_state_into(model, stage1.state_dict(), new_ok=NEW_IN_G)
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    scale = float(model.logit_scale.detach().float())
    norm_ones = bool(torch.all(model.text.model.layers[0].cross_attn.norm2.weight == 1))
    std = float(model.query_tokens.detach().float().std())
    up_proj = model.text.model.layers[1].mlp.up_proj.weight
    inherited = bool(torch.equal(up_proj, stage1.text.model.layers[1].mlp.up_proj.weight.to(up_proj.dtype)))
print(f"partitioned={partitioned} logit_scale={scale:.3f} cross_norm_ones={norm_ones} query_std={std:.4f} "
      f"inherited={inherited} created={len(report.created)}")
dist.destroy_process_group()
