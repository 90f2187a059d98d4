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

from tunelab.files import RECIPE_FILE
from tunelab.models.gguf import source_of
from tunelab.runs.registry import record_run
from tunelab.runs.report import write_report
from tunelab.runs.rundir import read_summary, write_summary
from tunelab.runs.summary import RunSummary, describe_failure, failure_status

if TYPE_CHECKING:
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData


class RunFolder:
    def __init__(self, recipe: Recipe, run_dir: Path, summary: RunSummary, *, main: bool, started: float):
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
        self.summary.steps, self.summary.tokens = steps, tokens
        if checkpoint is not None:
            self.summary.wall_s, self.summary.last_checkpoint = self.wall(), checkpoint
            self.save()

    def fail(self, exc: BaseException) -> None:
        """Ctrl-C is not a failure: the run can be resumed from its last checkpoint. `steps` is the
        live count record_progress kept."""
        summary = self.summary
        summary.status = failure_status(exc)
        summary.error, summary.wall_s, summary.peak_mem_mb = (
            describe_failure(exc),
            self.wall(),
            peak_memory_mb(),
        )
        if self.main:
            self.save()
            self._register()
            with contextlib.suppress(Exception):  # the original error is being raised; it matters more
                write_report(self.run_dir)

    def complete(
        self, *, steps: int, total_steps: int, tokens: int, stopped_early: bool, metrics: dict[str, Any]
    ) -> None:
        summary = self.summary
        summary.status, summary.finished_at, summary.error = "completed", now(), None
        summary.steps, summary.total_steps, summary.tokens = steps, total_steps, tokens
        summary.stopped_early, summary.metrics = stopped_early, metrics
        summary.wall_s, summary.peak_mem_mb = self.wall(), peak_memory_mb()
        if self.main:
            self.save()
            self._register()
            summary.report = str(write_report(self.run_dir))
            self.save()

    def wall(self) -> float:
        """The whole run's wall time: every earlier segment (resumed runs) plus this one so far."""
        return round(self.summary.earlier_segments_s + time.time() - self.started, 2)

    def _register(self, data_hash: str | None = None) -> None:
        if not self.main:
            return
        recipe_yaml = (self.run_dir / RECIPE_FILE).read_text(encoding="utf-8")
        record_run(
            self.recipe.output.dir,
            run_id=self.run_dir.name,
            recipe_yaml=recipe_yaml,
            data_hash=data_hash,
            summary=self.summary,
        )


def initial_summary(
    recipe: Recipe, run_dir: Path, source: str, data: PreparedData, params: tuple[int, int], resumed: bool
) -> RunSummary:
    """summary.json at the start of a segment; a resumed run carries its earlier segments' records."""
    previous = read_summary(run_dir) if resumed else RunSummary()
    trainable, total = params
    return RunSummary(
        name=recipe.name,
        task=recipe.task,
        method=recipe.method.name,
        model=source,
        weights_from=source_of(source),
        run_dir=str(run_dir),
        started_at=previous.started_at or now(),
        steps=previous.steps,
        tokens=previous.tokens,
        wall_s=previous.wall_s,
        earlier_segments_s=previous.wall_s,  # wall_s adds this segment's time to it
        segments=previous.segments + 1 if resumed else 1,
        last_checkpoint=previous.last_checkpoint,  # still there to resume from, until a newer one
        pid=os.getpid(),
        host=socket.gethostname(),
        peak_mem_mb=previous.peak_mem_mb,
        trainable_params=trainable,
        total_params=total,
        examples={split: len(examples) for split, examples in data.splits.items()},
        notes=data.notes,
        before_training=previous.before_training,
        before_training_split=previous.before_training_split,
        baselines=previous.baselines,
        forgetting_before=previous.forgetting_before,
        tags=dict(recipe.output.tags),
    )


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
