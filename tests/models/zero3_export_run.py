"""Launched on 2 gloo ranks by test_streaming_weights.py (torch.distributed.run):
    zero3_export_run.py OUT_DIR MAX_SHARD_SIZE [--full-gather]

Builds a ~50 MB InternVL-C inside deepspeed.zero.Init, exports it with weights.save_pretrained (module by
module; `--full-gather`: the old way, the whole model gathered on every rank and rank 0 saving a full state,
for comparison), measures each rank's held bytes (weights.track_host_tensors) and RSS growth (VmHWM after
minus VmRSS before, the peak reset through /proc/self/clear_refs), loads the export back into a fresh ZeRO-3
model (weights.load_checkpoint, streamed) and checks it against the gathered original. Prints one
`FACTS {json}` line per rank."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))

import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402,F401  (imported before measuring)
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from internvl_train.models import weights  # noqa: E402
from internvl_train.models.config import ModelConfig  # noqa: E402
from internvl_train.models.internvit.configuration import VisionTowerConfig  # noqa: E402
from internvl_train.models.internvl_c.configuration import TextTowerConfig  # noqa: E402
from internvl_train.models.internvl_c.modeling import InternVLC  # noqa: E402


def config() -> ModelConfig:
    return ModelConfig(
        name="zero3-export-test",
        vision=VisionTowerConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, image_size=32,
                                 patch_size=8, norm_type="rms_norm", qk_normalization=True, qkv_bias=False,
                                 layer_scale_init=0.1),
        text=TextTowerConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, vocab_size=8000,
                             max_position_embeddings=128),
        embed_dim=128, clip_projector_heads=4)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measured(fn):
    """(result, RSS growth in bytes, seconds): peak RSS during fn minus RSS before it."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, start = _status("VmRSS"), time.perf_counter()
    result = fn()
    return result, _status("VmHWM") - before, time.perf_counter() - start


def build(ds_config: dict) -> InternVLC:
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=torch.float32):
        return InternVLC(config())


def main() -> None:
    out, max_shard = Path(sys.argv[1]), sys.argv[2]
    full_gather = "--full-gather" in sys.argv
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    hf_switch = HfDeepSpeedConfig(ds_config)  # noqa: F841  transformers' ZeRO-3 switch, alive while building
    model = build(ds_config)
    params = list(model.parameters())
    assert weights.is_partitioned(model)
    sizes = {k: weights._nbytes(t) for k, t in model.state_dict(keep_vars=True).items()}
    groups = weights._module_groups(sizes)
    largest_module = max(sum(sizes[k] for k in g) for g in groups)
    partition_bytes = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)
    export_dir = out / "export"

    def export() -> None:
        if not full_gather:
            weights.save_pretrained(model, export_dir, max_shard_size=max_shard)
            return
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):  # the engine's old export
            if rank == 0:
                weights.save_pretrained(model, export_dir, max_shard_size=max_shard,
                                        state={k: v.detach().to("cpu", copy=True) for k, v in
                                               model.state_dict().items()})

    with weights.track_host_tensors() as exporting:
        _, export_rss, export_s = measured(export)
    dist.barrier()

    fresh = build(ds_config)
    with weights.track_host_tensors() as loading:
        _, load_rss, _ = measured(lambda: weights.load_checkpoint(fresh, export_dir))
    shard_bytes = [sum(t.numel() * t.element_size() for t in weights._meta_of_file(f).values())
                   for f in weights.weight_files(export_dir)]

    with deepspeed.zero.GatheredParameters(params + list(fresh.parameters()), modifier_rank=None):
        original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reloaded = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
    on_disk = weights.read_state_dict(export_dir)
    equal = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    facts = {"rank": rank, "full_bytes": sum(sizes.values()), "partition_bytes": partition_bytes,
             "largest_module": largest_module, "largest_tensor": max(sizes.values()),
             "max_shard_size": weights_limit(max_shard),
             "export_peak": exporting.peak_live, "export_copied": exporting.bytes_copied,
             "export_rss_growth": export_rss, "export_s": export_s,
             "shards_written": len(exporting.shards_written), "biggest_shard": max(shard_bytes),
             "load_peak": loading.peak_live, "load_rss_growth": load_rss,
             "reloaded_equal": equal(on_disk, original), "gathered_equal_reloaded": equal(reloaded, original)}
    print("FACTS " + json.dumps(facts), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def weights_limit(size: str) -> int:
    from huggingface_hub.serialization._base import parse_size_to_int

    return parse_size_to_int(size)


if __name__ == "__main__":
    main()
