"""Non-finite guard. DeepSpeed skips a step whose gradient norm is inf/NaN under ZeRO-1/2/3 and bf16;
with ZeRO-0/fp32 GuardedAdamW does. What is left for us: make a non-finite *loss* on any rank produce
non-finite gradients on every rank (so the step is skipped everywhere, even when the bad value does not
reach the gradients), and count consecutive skipped steps."""
from __future__ import annotations

import math
from typing import Any

import torch

from internvl_train.engine.collectives import any_rank


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite steps: the run stops, its last good checkpoint intact."""


class GuardedEngine:
    """The DeepSpeed engine as the stage sees it: identical, except that backward()
    - poisons the gradients of a micro-batch whose loss is non-finite on any rank, and
    - does the bookkeeping DeepSpeedEngine.forward would have done when the stage computed the loss by
      calling `engine.module` (or its submodules) directly, as the Stage contract allows. Without it,
      ZeRO-3 never advances its micro-step counter and gradient accumulation keeps only the last
      micro-batch's gradient (measured: 2-step accumulation gave half the true gradient norm)."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.saw_nonfinite_loss = False
        self._forward_through_engine = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._forward_through_engine = True
        return self._engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> Any:
        if any_rank(not bool(torch.isfinite(loss.detach()).all())):
            self.saw_nonfinite_loss = True
            loss = loss * float("nan")
        if not self._forward_through_engine:
            self._forward_bookkeeping(loss)
        self._forward_through_engine = False
        return self._engine.backward(loss, **kwargs)

    def _forward_bookkeeping(self, loss: torch.Tensor) -> None:
        """DeepSpeedEngine.forward's work around the module call (deepspeed 0.19): reset the ZeRO
        backward state of the micro-step and hook the backward prologue onto the output."""
        from deepspeed.runtime.utils import register_output_backward_hooks
        from deepspeed.runtime.base_optimizer import ZeROOptimizer

        engine = self._engine
        if isinstance(engine.optimizer, ZeROOptimizer):
            engine.optimizer.clear_backward_seen_flag()
        register_output_backward_hooks(loss, preprocess_once_fn=engine._backward_prologue,
                                       preprocess_per_tensor_fn=engine._backward_prologue_per_tensor)

    def take_nonfinite_flag(self) -> bool:
        flag, self.saw_nonfinite_loss = self.saw_nonfinite_loss, False
        return flag


class NonFiniteCounter:
    """Counts skipped steps; raises after `limit` in a row."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def record(self, skipped: bool, step: int, loss: float, grad_norm: float | None, last_ckpt: str | None) -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        if self.limit > 0 and self.consecutive >= self.limit:
            raise NonFiniteLossError(
                f"stopping at step {step}: {self.consecutive} consecutive optimizer steps had a non-finite "
                f"loss or gradient (last loss={loss}, grad norm={grad_norm}); trainer.max_nonfinite_steps="
                f"{self.limit}. Weights were not updated by the skipped steps. Last good checkpoint: "
                f"{last_ckpt or 'none'}. Lower trainer.lr, raise trainer.warmup_steps, use precision=fp32, "
                f"or inspect the data around this step; then resume.")


def is_finite_number(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
