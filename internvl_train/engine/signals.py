"""Stop signals: SIGUSR1 (SLURM's --signal), SIGTERM (scancel, time limit, preemption) and SIGINT (Ctrl-C).

The trainer owns them for the whole run (helper processes ignore them: data_pipelines/workers.py). During
the training loop a signal only sets a flag; at the next step boundary all ranks agree, a checkpoint is
saved and the process exits. Outside the loop (start-up, the final evaluation, the export, closing the
tracker) nothing unsaved is at stake: the last checkpoint is complete and a rerun redoes only what is
missing, so the signal stops the run at once (`Interrupted`). A second Ctrl-C during the loop also stops at
once. Exit codes: EXIT_PREEMPTED (75) for SIGTERM/SIGUSR1, so launchers requeue; 130 for Ctrl-C.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

from internvl_train.engine.collectives import any_rank

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "preempted, checkpoint saved, resume me"
EXIT_INTERRUPTED = 128 + signal.SIGINT  # the shell's code for Ctrl-C
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def exit_code_for(signum: int) -> int:
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


class Interrupted(BaseException):
    """A stop signal outside the training loop. A BaseException, like KeyboardInterrupt, so that library
    code catching Exception does not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """`with StopSignals() as stop:` installs the handlers (the previous ones come back on exit);
    `with stop.deferred():` marks the training loop, where a signal waits for the step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        repeated_ctrl_c = signum == signal.SIGINT and self.received == signal.SIGINT
        if self.received is None:
            self.received = signum
        if not self._deferring or repeated_ctrl_c:
            raise Interrupted(signum)

    def __enter__(self) -> "StopSignals":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Signals received inside only set `received` (checked with `agreed()`); one that arrived before
        is raised on entry."""
        if self.received is not None:
            raise Interrupted(self.received)
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def agreed(self) -> bool:
        """Collective: True on every rank when any rank received a stop signal."""
        return any_rank(self.received is not None)

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "none"
