"""User-facing errors.

Every problem a user can fix (a bad recipe, a missing file, a malformed row) is raised as a
`TunelabError`: a short message naming the problem and, where we know it, the fix. The CLI prints
these without a traceback; anything else is a bug in tunelab and is reported as such.

The exceptions that end a run without it failing (a requested stop, an interruption, a pruned trial)
live here too: training raises them, and the run records, the CLI and a search tell them apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class TunelabError(Exception):
    """A problem the user can fix. `problems` holds one line per problem when there are several."""

    def __init__(self, message: str, *, fix: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        if self.fix:
            lines.append(f"fix: {self.fix}")
        return "\n".join(lines)


class RecipeError(TunelabError):
    """The recipe does not validate; `problems` lists every one, each prefixed by its YAML path."""


class DataError(TunelabError):
    """A data file is missing, unreadable or has bad rows (each named as file:line: reason)."""


class ModelLoadError(TunelabError):
    """The model could not be found or loaded; the message names every place that was tried."""


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


class RunPruned(Exception):
    """Raised from a validation callback (a hyper-parameter search's pruner): the run ends `pruned`,
    a verdict on its hyper-parameters, not an error."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"pruned at step {step}: {reason}")
        self.step = step
