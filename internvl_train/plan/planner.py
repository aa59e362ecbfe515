"""The plan of a recipe: parameters, per-rank memory, whether it fits, FLOPs and time, from the meta model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from internvl_train.plan.memory import ModelStateBytes, model_state_bytes, zero3_gather_bytes
from internvl_train.plan.meta_model import PlannedModel, build_planned_model
from internvl_train.plan.settings import PlanSettings
from internvl_train.plan.workload import Workload, build_workload


@dataclass
class Plan:
    cfg: Any
    settings: PlanSettings
    model: PlannedModel
    workload: Workload
    state: ModelStateBytes
    gather_bytes: float  # ZeRO-3 working set (0 otherwise)

    # ---- batch and memory ------------------------------------------------------------------------------------
    @property
    def micro_batch(self) -> int:
        return int(self.cfg.trainer.micro_batch_size)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * int(self.cfg.trainer.grad_accum_steps) * self.settings.gpus

    def activation_bytes(self, checkpointing: bool | None) -> float:
        """Peak activation bytes of one micro-batch (None: checkpointing as the recipe configures it)."""
        return self.micro_batch * self.workload.activations.peak(checkpointing)

    @property
    def gpu_bytes(self) -> float:
        return self.state.gpu_total + self.gather_bytes + self.activation_bytes(None)

    @property
    def headroom_bytes(self) -> float:
        return self.settings.gpu_mem_gb * 1e9 - self.gpu_bytes

    # ---- compute ---------------------------------------------------------------------------------------------
    @property
    def step_seconds(self) -> float:
        """One optimizer step: every rank trains micro x accum samples at mfu x peak FLOP/s."""
        per_gpu = self.workload.flops_per_sample * self.micro_batch * int(self.cfg.trainer.grad_accum_steps)
        return per_gpu / (self.settings.mfu * self.settings.peak_tflops * 1e12)

    @property
    def samples_per_second(self) -> float:
        return self.global_batch / self.step_seconds

    @property
    def budget_seconds(self) -> float:
        return int(self.cfg.trainer.max_steps) * self.step_seconds


def build_plan(cfg: Any, settings: PlanSettings) -> Plan:
    planned = build_planned_model(cfg)
    ds, precision = cfg.deepspeed, cfg.trainer.precision
    state = model_state_bytes(planned.trainable, planned.total - planned.trainable, precision, ds.zero_stage,
                              settings.gpus, ds.offload_optimizer == "cpu", ds.offload_param == "cpu")
    gather = zero3_gather_bytes(ds.stage3_prefetch_bucket_size, largest_module_params(planned.model), precision) \
        if ds.zero_stage == 3 else 0.0
    return Plan(cfg, settings, planned, build_workload(cfg, planned, settings.gpus), state, gather)


def largest_module_params(model: nn.Module) -> int:
    """Parameters of the largest unit ZeRO-3 gathers at once: a layer of any layer list, or an embedding/linear."""
    units = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    units += [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear))]
    return max((sum(p.numel() for p in m.parameters()) for m in units), default=0)
