"""A run folder through its life: started, checkpointed, then failed, interrupted or completed.

Every record of the run goes through `RunFolder`: summary.json (written atomically), the registry
row and report.html. Only the main process writes; under DDP the others keep their summary in memory.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.runs.registry import record_run
from tunelab.runs.report import write_report
from tunelab.runs.rundir import read_summary, write_summary

if TYPE_CHECKING:
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData


class RunFolder:
    def __init__(self, recipe: Recipe, run_dir: Path, summary: dict[str, Any], *, main: bool, started: float):
        self.recipe, self.run_dir, self.summary = recipe, run_dir, summary
        self.main, self.started = main, started

    def save(self) -> None:
        """summary.json as it stands (kept when the process dies: a resumed run reads it back)."""
        if self.main:
            write_summary(self.run_dir, self.summary)

    def start(self, data_hash: str | None) -> None:
        self.save()
        self._register(data_hash)

    def record_progress(self, steps: int, tokens: int, checkpoint: str | None = None) -> None:
        """The live counts; with a checkpoint, written at once, so a run killed after it (kill -9, a lost
        machine) still shows its steps, tokens and time so far, and where it can resume from."""
        self.summary.update(steps=steps, tokens=tokens)
        if checkpoint is not None:
            self.summary.update(wall_s=self.wall(), last_checkpoint=checkpoint)
            self.save()

    def fail(self, exc: BaseException) -> None:
        """Ctrl-C is not a failure: the run can be resumed from its last checkpoint. `steps` is the
        live count record_progress kept."""
        self.summary.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            error=describe_failure(exc),
            wall_s=self.wall(),
            peak_mem_mb=peak_memory_mb(),
        )
        if self.main:
            self.save()
            self._register()
            with contextlib.suppress(Exception):  # the original error is being raised; it matters more
                write_report(self.run_dir)

    def complete(self, **results: Any) -> None:
        self.summary.update(
            status="completed", wall_s=self.wall(), peak_mem_mb=peak_memory_mb(), finished_at=now(), **results
        )
        self.summary.pop("error", None)
        if self.main:
            self.save()
            self._register()
            self.summary["report"] = str(write_report(self.run_dir))
            self.save()

    def wall(self) -> float:
        """The whole run's wall time: every earlier segment (resumed runs) plus this one so far."""
        return round(float(self.summary.get("earlier_segments_s", 0.0)) + time.time() - self.started, 2)

    def _register(self, data_hash: str | None = None) -> None:
        if not self.main:
            return
        recipe_yaml = (self.run_dir / "recipe.yaml").read_text(encoding="utf-8")
        record_run(
            self.recipe.output.dir,
            run_id=self.run_dir.name,
            recipe_yaml=recipe_yaml,
            data_hash=data_hash,
            summary=self.summary,
        )


def initial_summary(
    recipe: Recipe, run_dir: Path, source: str, data: PreparedData, params: tuple[int, int], resumed: bool
) -> dict[str, Any]:
    """summary.json at the start of a segment; a resumed run carries its earlier segments' records."""
    previous = read_summary(run_dir) if resumed else {}
    trainable, total = params
    kept = ("baseline_split", "forgetting_before")
    return {
        "name": recipe.name,
        "task": recipe.task,
        "method": recipe.method.name,
        "model": source,
        "run_dir": str(run_dir),
        "status": "running",
        "started_at": previous.get("started_at", now()),
        "steps": previous.get("steps", 0),
        "tokens": previous.get("tokens", 0),
        "wall_s": previous.get("wall_s", 0.0),
        # Time of the segments before this one (0 for a fresh run): wall_s adds this segment's to it.
        "earlier_segments_s": previous.get("wall_s", 0.0),
        "segments": previous.get("segments", 0) + 1,
        "pid": os.getpid(),  # `runs list` tells a live run from one whose process is gone
        "host": socket.gethostname(),
        "peak_mem_mb": previous.get("peak_mem_mb", 0.0),
        "trainable_params": trainable,
        "total_params": total,
        "examples": {split: len(examples) for split, examples in data.splits.items()},
        "notes": data.notes,
        "baseline": previous.get("baseline", {}),
        "baselines": previous.get("baselines", {}),
        **{key: previous[key] for key in kept if key in previous},
        "metrics": {},
    }


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
