"""The loss-based passes over a held-out split, during training and after it: the whole split, then each
dataset's own rows in a multi-dataset run (`val_<dataset>_loss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.data.pipeline import PreparedData
from tunelab.data.tokenize import Example
from tunelab.evaluation.metrics import evaluate
from tunelab.evaluation.scoring import split_prefix
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import Objective, collate_for


@dataclass
class SplitEvaluator:
    model: Any
    objective: Objective
    task: str
    batch_size: int
    data: PreparedData
    pad_id: int
    accelerator: Any

    def __call__(self, split: str) -> dict[str, float]:
        examples, metrics = self.data.splits[split], {}
        for name, subset in [("", examples), *per_dataset(examples)]:
            prefix = f"{split_prefix(split)}_{name}" if name else split_prefix(split)
            batches = eval_batches(
                subset, self.batch_size, self.pad_id, self.accelerator, collate_for(self.task)
            )
            metrics.update(evaluate(self.model, batches, self.objective, self.task, self.accelerator, prefix))
        return metrics


def per_dataset(examples: list[Example]) -> list[tuple[str, list[Example]]]:
    names = [str(e["dataset"]) for e in examples if e.get("dataset")]
    if not names:
        return []
    return [(name, [e for e in examples if e.get("dataset") == name]) for name in dict.fromkeys(names)]
