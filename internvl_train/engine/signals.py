"""Preemption: SIGUSR1 (SLURM's --signal) or SIGTERM sets a flag; the trainer checks it at each step
boundary, all ranks agree, a checkpoint is saved and the process exits with EXIT_PREEMPTED."""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from internvl_train.engine.distributed import any_rank

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "preempted, checkpoint saved, resume me"
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Install with `with PreemptionFlag() as flag:`; previous handlers come back on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __enter__(self) -> "PreemptionFlag":
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Collective: True on every rank when any rank received a preemption signal."""
        return any_rank(self.received is not None)
