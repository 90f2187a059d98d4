"""Where a job's worker runs: the JobRunner interface, and its embedded implementation.

A worker is `python -m tunelab train recipe.yaml [--resume RUN_DIR]`, the same command a user runs,
so a job's run is an ordinary run. The local runner starts it as a child process; a cluster runner
(Ray Jobs) would submit the same command as an entrypoint. The supervisor only needs four verbs.

Local workers die with the server (Linux's PR_SET_PDEATHSIG): a worker that outlived a killed
server would keep training unobserved, and the restarted server would start a second one on the
same run folder. The job resumes from its newest checkpoint instead, which gives the same weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from tunelab.runs.registry import process_alive

PR_SET_PDEATHSIG = 1


class JobRunner(Protocol):
    survives_server: bool  # whether a worker lives on when the server dies (and can be watched again)

    def start(self, job_id: str, command: list[str], cwd: Path, log: Path) -> str:
        """Start the worker, its output appended to `log`; a handle the other calls take (and the job
        records, so a restarted server still knows it)."""
        ...

    def exit_code(self, handle: str) -> int | None:
        """The worker's exit status once it has ended, else None."""
        ...

    def pause(self, handle: str) -> None:
        """Ask the worker to checkpoint and stop (it exits 130, interrupted)."""
        ...

    def kill(self, handle: str) -> None:
        """Stop the worker now; the step in progress is lost."""
        ...


def train_command(recipe: Path, resume: Path | None) -> list[str]:
    command = [sys.executable, "-m", "tunelab", "train", str(recipe)]
    return [*command, "--resume", str(resume)] if resume is not None else command


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Not Linux: no such call; the supervisor kills the leftovers it finds at start-up instead.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalRunner:
    """Workers as child processes of the server. The parent-death signal fires when the *thread*
    that started the child ends, so only the supervisor's long-lived thread may call `start`."""

    survives_server = False

    def __init__(self) -> None:
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, job_id: str, command: list[str], cwd: Path, log: Path) -> str:
        env = {**os.environ, "TUNELAB_JOB_ID": job_id, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:
            child = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._children[str(child.pid)] = child
        return str(child.pid)

    def exit_code(self, handle: str) -> int | None:
        child = self._children.get(handle)
        if child is None:  # started by an earlier server: gone with it (parent-death signal)
            return None if process_alive(int(handle)) else -signal.SIGKILL
        code = child.poll()
        if code is not None:
            del self._children[handle]
        return code

    def pause(self, handle: str) -> None:
        _signal(int(handle), signal.SIGTERM)

    def kill(self, handle: str) -> None:
        _signal(int(handle), signal.SIGKILL)
        child = self._children.get(handle)
        if child is not None:
            child.wait()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)  # the worker leads its own session: its helpers get the signal too
