"""A batch as the loop, the objectives and the fused loss see it: named tensors, some of them bookkeeping."""

from __future__ import annotations

import torch

Batch = dict[str, torch.Tensor]


def model_inputs(batch: Batch) -> Batch:
    """What the model takes: not the labels, nor bookkeeping keys (named with a leading underscore)."""
    return {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}
