"""What a task's evaluation hooks (tasks/registry.py: baselines, after_training, validation_extras) read:
the run's recipe and prepared data, the model (the base before training, the fine-tuned one after), and
what was scored before. One object, so a task's hooks can grow without every caller changing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.config import Recipe
from tunelab.data.pipeline import PreparedData, Records


@dataclass
class TaskContext:
    recipe: Recipe
    model: Any
    tokenizer: Any
    data: PreparedData
    records: Records | None  # None on a data-cache hit: the split files in `cached_files` hold them
    cached_files: Path | None
    accelerator: Any
    console: Console
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # the base model's, by baseline
    before_training: dict[str, float] = field(default_factory=dict)  # the untrained model's scores
    notes: list[str] = field(default_factory=list)  # warnings for summary.json and the report

    @property
    def split(self) -> str | None:
        """The split headline scores come from: test, else validation (None when there is neither)."""
        return next((s for s in ("test", "validation") if s in self.data.splits), None)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def label_names(self) -> list[str]:
        """Class or tag names in id order."""
        assert self.data.label_map is not None
        return sorted(self.data.label_map, key=self.data.label_map.__getitem__)
