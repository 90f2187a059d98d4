"""The dtypes `train` would use for a recipe on this machine, as training/precision.py resolves them:
what the model loads in and what its activations are kept in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.config import Recipe


def _precision(recipe: Recipe) -> Any:
    from tunelab.training.precision import precision_for

    return precision_for(recipe)


def _weights_dtype(recipe: Recipe) -> Any:
    """The dtype `train` loads the model in (training/precision.py): float32 master weights for full
    and freeze, the compute dtype for an adapter method's frozen base."""
    return _precision(recipe).weights


def _activation_bytes(recipe: Recipe) -> int:
    precision = _precision(recipe)
    return int(
        precision.compute_dtype.itemsize if precision.compute != "fp32" else precision.weights.itemsize
    )
