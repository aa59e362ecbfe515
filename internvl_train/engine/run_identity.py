"""What must not change between a checkpoint and the run that resumes from it.

The config hash covers the resolved config minus keys that may legitimately change on resume:
run length and bookkeeping (trainer.max_steps, log/save/eval cadence, keep_last, progress bar, timeouts,
MFU peak, non-finite limit), the logger, resume/mode/run_dir themselves, and init_from (the checkpoint
supersedes it). Anything else (model, data, lr, batch, ZeRO stage, seed...) changing makes the resume
refuse with the differing keys. Extending max_steps stretches the cosine schedule from that point on.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import OmegaConf

RESUMABLE_KEYS = (
    "trainer.max_steps", "trainer.log_every", "trainer.save_every", "trainer.keep_last", "trainer.eval_every",
    "trainer.progress_bar", "trainer.dist_timeout_s", "trainer.peak_tflops_per_device",
    "trainer.max_nonfinite_steps", "logger", "resume", "mode", "run_dir", "init_from",
)


def identity_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain dict, without the keys that may change on resume."""
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for dotted in RESUMABLE_KEYS:
        node, *parents = data, *dotted.split(".")[:-1]
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(dotted.split(".")[-1], None)
    return data


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in config_diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_resumable(saved: dict[str, Any], identity: dict[str, Any], world_size: int, path: str) -> None:
    if saved.get("world_size") != world_size:
        raise RuntimeError(f"cannot resume {path}: it was written by {saved.get('world_size')} ranks, this job "
                           f"has {world_size}. Relaunch with {saved.get('world_size')} ranks or resume=never.")
    if saved.get("config_hash") != config_hash(identity):
        keys = config_diff(saved.get("config", {}), identity)
        raise RuntimeError(f"cannot resume {path}: the config differs from the checkpoint's in {keys}. "
                           "Restore those values, or start a new run (another run_dir or resume=never).")
