"""A graceful stop on SIGTERM or Ctrl-C: finish the step, save a checkpoint, stop as `interrupted`.

Schedulers (Slurm, Kubernetes, a spot-instance notice) and `tunelab serve`'s pause send SIGTERM and
wait; a person at the terminal presses Ctrl-C (SIGINT). A run that dies at once loses everything since
its last checkpoint (with `save_every: 1000`, that can be all of it); one that checkpoints first
resumes exactly where it stopped. A second SIGTERM is not special: the step in progress still ends.
A second Ctrl-C is a person who will not wait for the step: it aborts at once, as Ctrl-C always did.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StopRequested(KeyboardInterrupt):
    """Raised by the loop after the checkpoint of a requested stop; a KeyboardInterrupt so the run
    folder, the registry and the CLI treat it as an interruption (resumable), not a failure."""

    def __init__(self, step: int):
        super().__init__(f"stopped on request after step {step} (checkpoint saved)")
        self.step = step


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM once its folder existed: what the CLI needs to say how to
    resume it. `checkpoint` is the newest complete one (None: nothing to resume from); `graceful`: it
    was saved at `step` itself. Under DDP every process raises it; only the main one should speak."""

    def __init__(self, run_dir: Path, step: int, checkpoint: str | None, *, graceful: bool, main: bool):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step, self.checkpoint, self.graceful = run_dir, step, checkpoint, graceful
        self.main = main


class StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


ONE_PROCESS_NOTICE = (
    "\nCtrl-C: finishing this step, then saving a checkpoint and stopping "
    "(Ctrl-C again stops at once, losing the steps since the last checkpoint)\n"
)
LAUNCHED_NOTICE = "\nCtrl-C: every process finishes this step, then saves a checkpoint and stops\n"


@contextmanager
def stop_on_signals(*, launched: bool = False, announce: bool = True) -> Iterator[StopFlag]:
    """A flag SIGTERM or a first Ctrl-C sets while the block runs; a second Ctrl-C raises
    KeyboardInterrupt at once. Under a launcher (`launched`: torchrun, accelerate launch) each process
    runs in a session of its own, so the terminal's Ctrl-C reaches only the launcher, which forwards
    one SIGINT to every process and SIGKILLs them after its shutdown timeout (launch.py raises it); a
    process there never aborts on a repeated signal. `announce`: say so on stderr (the main process).
    Where SIGINT is ignored (as the process was started), it stays ignored. Outside the main thread (a server's worker thread) signals cannot be caught, and the flag simply
    never sets."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigterm(_signum: int, _frame: Any) -> None:
        flag.requested = True

    def on_sigint(_signum: int, _frame: Any) -> None:
        if flag.requested:
            if not launched:
                raise KeyboardInterrupt
            return
        flag.requested = True
        if announce:  # inside the progress bar, rich redirects stderr: the line prints above the bar
            sys.stderr.write(LAUNCHED_NOTICE if launched else ONE_PROCESS_NOTICE)
            sys.stderr.flush()

    previous_term = signal.signal(signal.SIGTERM, on_sigterm)
    # A process started with Ctrl-C ignored (nohup, a background job of a script) keeps ignoring it.
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


class RunPruned(Exception):
    """Raised from a validation callback (a hyper-parameter search's pruner): the run ends `pruned`,
    a verdict on its hyper-parameters, not an error."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"pruned at step {step}: {reason}")
        self.step = step
