"""Evaluation over a split: token-weighted loss for every task, accuracy for classification."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from tunelab.training.objectives import Batch, Objective


@torch.no_grad()
def evaluate(
    model: Any, batches: Iterable[Batch], objective: Objective, task: str, accelerator: Any, prefix: str
) -> dict[str, float]:
    """Loss summed over targets then divided by their count, so it does not depend on batch size."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    targets = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    correct = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    for batch in batches:
        out = objective.loss(model, batch)
        loss_sum += out.loss_sum.double()
        targets += objective.count_targets(batch)
        if task == "classify":
            correct += (out.logits.argmax(-1) == batch["labels"]).sum()
    loss_sum, targets, correct = (accelerator.reduce(t, "sum") for t in (loss_sum, targets, correct))
    model.train(was_training)
    n = max(float(targets), 1.0)
    metrics = {f"{prefix}_loss": float(loss_sum) / n}
    if task == "sft":
        metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 50.0))
    if task == "classify":
        metrics[f"{prefix}_accuracy"] = float(correct) / n
    return metrics
