"""The DeepSpeed JSON config, generated from our config groups (one home per knob)."""
from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def zero_section(ds: Any) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 0:
        return zero
    zero.update(overlap_comm=ds.overlap_comm, contiguous_gradients=ds.contiguous_gradients,
                reduce_bucket_size=ds.reduce_bucket_size)
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=ds.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=ds.stage3_param_persistence_threshold)
        if ds.offload_param == "cpu":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def build_ds_config(cfg: Any, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `cfg` (trainer + deepspeed groups). With ZeRO-0 in fp32 our GuardedAdamW
    clips (so the logged norm is the pre-clip one, as with ZeRO>0), hence gradient_clipping 0 there."""
    tr, ds = cfg.trainer, cfg.deepspeed
    if ds.offload_param == "cpu" and ds.zero_stage != 3:
        raise ValueError("deepspeed.offload_param=cpu needs deepspeed.zero_stage=3")
    if ds.offload_optimizer == "cpu" and ds.zero_stage == 0:
        raise ValueError("deepspeed.offload_optimizer=cpu needs deepspeed.zero_stage>=1")
    ours_clip = ds.zero_stage == 0 and tr.precision != "bf16"
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.grad_accum_steps,
        "train_batch_size": tr.micro_batch_size * tr.grad_accum_steps * world_size,
        "gradient_clipping": 0.0 if ours_clip else float(tr.grad_clip),
        "bf16": {"enabled": tr.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero_section(ds),
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    extra = OmegaConf.to_container(ds.extra, resolve=True) if OmegaConf.is_config(ds.extra) else dict(ds.extra)
    return deep_merge(config, extra)
