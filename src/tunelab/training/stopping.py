"""A graceful stop on SIGTERM: finish the step, save a checkpoint, stop as `interrupted`.

Schedulers (Slurm, Kubernetes, a spot-instance notice) and `tunelab serve`'s pause send SIGTERM and
wait; a run that dies at once loses everything since its last checkpoint, one that checkpoints first
resumes exactly where it stopped. A second SIGTERM is not special: the step in progress still ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class StopRequested(KeyboardInterrupt):
    """Raised by the loop after the checkpoint of a requested stop; a KeyboardInterrupt so the run
    folder, the registry and the CLI treat it as an interruption (resumable), not a failure."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request after step {step} (checkpoint saved)")
        self.step = step


class StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_sigterm() -> Iterator[StopFlag]:
    """A flag SIGTERM sets while the block runs. Outside the main thread (a server's worker thread)
    signals cannot be caught, and the flag simply never sets."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(_signum: int, _frame: Any) -> None:
        flag.requested = True

    previous = signal.signal(signal.SIGTERM, request)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


class RunPruned(Exception):
    """Raised from a validation callback (a hyper-parameter search's pruner): the run ends `pruned`,
    a verdict on its hyper-parameters, not an error."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"pruned at step {step}: {reason}")
        self.step = step
