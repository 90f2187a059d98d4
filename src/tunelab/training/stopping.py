"""A graceful stop on SIGTERM or Ctrl-C: finish the step, save a checkpoint, stop as `interrupted`.

Schedulers (Slurm, Kubernetes, a spot-instance notice) and `tunelab serve`'s pause send SIGTERM and
wait; a person at the terminal presses Ctrl-C (SIGINT). A run that dies at once loses everything since
its last checkpoint (with `save_every: 1000`, that can be all of it); one that checkpoints first
resumes exactly where it stopped. A second SIGTERM is not special: the step in progress still ends.
A second Ctrl-C is a person who will not wait for the step: it aborts at once, as Ctrl-C always did.
The exceptions such a stop raises (StopRequested, RunInterrupted) are in errors.py.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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
