"""The passes over a held-out split, during training and after it: the loss pass over the whole split,
then each dataset's own rows in a multi-dataset run (`val_<dataset>_loss`); at validation passes also the
scores the loss pass cannot give (the task's `validation_extras`: a tagger's entity scores, generated
answers when early stopping watches them), so that early stopping can watch any metric the task reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.data.pipeline import PreparedData
from tunelab.data.tokenize import Example
from tunelab.evaluation.metrics import evaluate
from tunelab.evaluation.scoring import split_prefix
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import Objective, collate_for

Scores = Callable[[], dict[str, float]]


@dataclass
class SplitEvaluator:
    model: Any
    objective: Objective
    task: str
    batch_size: int
    data: PreparedData
    pad_id: int
    accelerator: Any
    validation_extras: Scores | None = None  # the task's (tasks/registry.py), at validation passes

    def __call__(self, split: str) -> dict[str, float]:
        examples, metrics = self.data.splits[split], {}
        for name, subset in [("", examples), *per_dataset(examples)]:
            prefix = f"{split_prefix(split)}_{name}" if name else split_prefix(split)
            batches = eval_batches(
                subset, self.batch_size, self.pad_id, self.accelerator, collate_for(self.task)
            )
            metrics.update(evaluate(self.model, batches, self.objective, self.task, self.accelerator, prefix))
        if split == "validation" and self.validation_extras is not None:
            metrics.update(self.validation_extras())
        return metrics


def per_dataset(examples: list[Example]) -> list[tuple[str, list[Example]]]:
    names = [str(e["dataset"]) for e in examples if e.get("dataset")]
    if not names:
        return []
    return [(name, [e for e in examples if e.get("dataset") == name]) for name in dict.fromkeys(names)]
