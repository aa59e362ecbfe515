"""Throughput and model-FLOPs utilisation (MFU) bookkeeping."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

# Dense peak TFLOP/s per device: (bf16, tf32) — vendor datasheets, SXM parts, no sparsity.
PEAK_TFLOPS = {
    "H200": (989.0, 494.7), "H100": (989.0, 494.7), "H800": (989.0, 494.7), "GH200": (989.0, 494.7),
    "A100": (312.0, 156.0), "A800": (312.0, 156.0), "L40S": (362.0, 183.0), "A10G": (70.0, 35.0),
    "L4": (121.0, 60.0), "V100": (125.0, 15.7),
}


def peak_tflops_per_device(configured: float, precision: str) -> float:
    """The configured peak, else the table's value for the local GPU, else 0 (MFU is then omitted)."""
    if configured > 0:
        return configured
    if not torch.cuda.is_available():
        return 0.0
    name = torch.cuda.get_device_name().upper()
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            bf16, tf32 = PEAK_TFLOPS[key]
            return bf16 if precision == "bf16" else tf32
    return 0.0


@dataclass
class MetricWindow:
    """Sums over the steps since the last log line (local to this rank)."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    data_wait_s: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    loss_steps: int = 0
    grad_norm: float | None = None

    def add_losses(self, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self.losses[key] = self.losses.get(key, 0.0) + value
        self.loss_steps += 1

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)


def throughput_metrics(samples: float, tokens: float, data_wait_s: float, elapsed_s: float, world_size: int,
                       flops_per_sample: float, peak_tflops: float) -> dict[str, float]:
    """Global throughput from global counts; data_wait_s is summed over ranks."""
    out = {"perf/samples_per_s": samples / elapsed_s,
           "perf/data_wait_frac": data_wait_s / (elapsed_s * world_size)}
    if tokens > 0:
        out["perf/tokens_per_s"] = tokens / elapsed_s
    if flops_per_sample > 0:
        tflops_per_device = flops_per_sample * samples / elapsed_s / world_size / 1e12
        out["perf/model_tflops_per_device"] = tflops_per_device
        if peak_tflops > 0:
            out["perf/mfu"] = tflops_per_device / peak_tflops
    return out
