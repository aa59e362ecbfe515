"""Per-rank bytes of model state under DeepSpeed ZeRO (mixed-precision AdamW), before activations.

Per trainable parameter: weight (2 bytes bf16 / 4 fp32), gradient (same), optimizer state 12 bytes in bf16 (fp32
master copy + two moments) or 8 in fp32 (two moments; the weight is the master): 16 bytes either way. A frozen
parameter holds only its weight. ZeRO stage 1 partitions the optimizer state over the N ranks, stage 2 also the
gradients, stage 3 also the weights (frozen ones included): e.g. all-trainable bf16 P parameters take
16P (stage 0), 4P + 12P/N (1), 2P + 14P/N (2), 16P/N (3) bytes per rank. Offload moves the optimizer state
(offload_optimizer=cpu) or the weights (offload_param=cpu, ZeRO-3) to CPU memory.
"""
from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BYTES = {"bf16": 2, "fp32": 4}
OPTIMIZER_BYTES = {"bf16": 12, "fp32": 8}  # bf16: fp32 master + exp_avg + exp_avg_sq; fp32: the two moments


@dataclass(frozen=True)
class ModelStateBytes:
    """Bytes per rank, on the GPU and in CPU memory (offload)."""

    params: float
    grads: float
    optimizer: float
    cpu_params: float = 0.0
    cpu_optimizer: float = 0.0

    @property
    def gpu_total(self) -> float:
        return self.params + self.grads + self.optimizer


def model_state_bytes(trainable: int, frozen: int, precision: str, zero_stage: int, ranks: int,
                      offload_optimizer: bool = False, offload_param: bool = False) -> ModelStateBytes:
    """Per-rank bytes of weights, gradients and optimizer state for `trainable` + `frozen` parameters."""
    w = WEIGHT_BYTES[precision]
    params = (trainable + frozen) * w / (ranks if zero_stage >= 3 else 1)
    grads = trainable * w / (ranks if zero_stage >= 2 else 1)
    optimizer = trainable * OPTIMIZER_BYTES[precision] / (ranks if zero_stage >= 1 else 1)
    cpu_params, cpu_optimizer = 0.0, 0.0
    if offload_optimizer:
        cpu_optimizer, optimizer = optimizer, 0.0
    if offload_param:
        cpu_params, params = params, 0.0
    return ModelStateBytes(params, grads, optimizer, cpu_params, cpu_optimizer)


def zero3_gather_bytes(prefetch_elements: int, largest_module_params: int, precision: str) -> float:
    """ZeRO-3 keeps weights partitioned but gathers them to compute: the live module plus the prefetch bucket."""
    return (prefetch_elements + largest_module_params) * WEIGHT_BYTES[precision]
