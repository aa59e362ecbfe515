"""Decode worker processes leave shutdown to the trainer.

A cluster stops a job by signalling every process of it (scancel, a time limit, preemption: SIGTERM; a
terminal's Ctrl-C: SIGINT to the whole foreground process group; SLURM's --signal: SIGUSR1). A DataLoader
worker dies of SIGTERM by default (torch installs a handler that re-raises it), and the trainer then crashes
on "DataLoader worker ... is killed by signal" instead of saving a checkpoint. Workers therefore ignore
these signals; the trainer catches them, saves, and stops its workers itself (a worker also exits on its
own when the trainer process is gone)."""
from __future__ import annotations

import signal

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def ignore_termination_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: runs in the worker after torch has installed its own handlers."""
    for sig in TERMINATION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
