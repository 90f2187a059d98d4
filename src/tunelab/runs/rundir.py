"""The run folder: runs/<name>-<timestamp>/ with recipe, metrics, summary, checkpoints and final/.

summary.json is rewritten atomically at every status change, so a reader never sees half a file,
and `status: completed` (with final/) is written only when the run really finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tunelab.config import Recipe, recipe_to_yaml
from tunelab.files import (
    METRICS_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    TENSORBOARD_DIR,
    read_summary_json,
    write_text_atomic,
)
from tunelab.runs.summary import RunSummary


def create_run_dir(recipe: Recipe) -> Path:
    parent = Path(recipe.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = parent / f"{recipe.name}-{stamp}"
    suffix = 2
    while run_dir.exists():  # two runs started in the same second
        run_dir = parent / f"{recipe.name}-{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    write_text_atomic(run_dir / RECIPE_FILE, recipe_to_yaml(recipe))
    return run_dir


def write_summary(run_dir: Path, summary: RunSummary) -> None:
    write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary.to_json(), indent=2, sort_keys=False) + "\n")


def read_summary(run_dir: Path) -> RunSummary:
    return RunSummary.from_json(read_summary_json(run_dir))


class MetricsLog:
    """One JSON line per log step in metrics.jsonl, mirrored to TensorBoard."""

    def __init__(
        self,
        run_dir: Path,
        enabled: bool = True,
        resume_step: int | None = None,
        *,
        tensorboard: bool = True,
        trackers: list[Any] | None = None,
    ):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.writer: Any = None
        self.trackers = trackers or []  # accelerate trackers (runs/trackers.py): mlflow, wandb
        if not enabled:
            return
        if resume_step is not None:
            self._drop_lines_after(resume_step)  # the interrupted run logged past its last checkpoint
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge)

    def _drop_lines_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        for tracker in self.trackers:
            tracker.log(values, step=step)
        if self.writer is None:
            return
        for key, value in values.items():
            split = key.split("_", 1)[0]
            tag = key.replace("_", "/", 1) if split in ("val", "test") else f"train/{key}"
            self.writer.add_scalar(tag, value, step)

    def close(self, error: BaseException | None = None) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.trackers:
            from tunelab.runs.trackers import finish

            for tracker in self.trackers:
                finish(tracker, error)


def last_train_loss(run_dir: Path) -> float | None:
    """The last train loss metrics.jsonl logged; None before the first log line."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    losses = [row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row]
    return losses[-1] if losses else None
