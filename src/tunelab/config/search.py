"""The recipe's `search:` section: what `tunelab tune` varies, how it samples, what it optimises.

Every parameter is named by its recipe path (`train.lr`, `method.r`, `preference.beta`), so anything a
recipe can set can be searched, LoRA's rank included. Only the shape is checked here; whether each
path exists and each value fits is checked against the recipe itself (tuning/space.check_space), so
the messages are the recipe's own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tunelab.config.directions import better
from tunelab.config.sections import Section


class Range(Section):
    """A number between low and high: an integer when both bounds are integers, else a float."""

    low: int | float
    high: int | float
    log: bool = Field(False, description="Sample on a log scale (learning rates); low must be > 0.")
    step: int | float | None = Field(None, gt=0, description="Only multiples of step above low (and a grid).")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and isinstance(self.step or 1, int)


class Tied(Section):
    """A parameter that follows another: `method.alpha: {same_as: method.r, times: 2}`."""

    same_as: str
    times: float = 1.0


Parameter = Range | Tied | list[Any]


class SearchConfig(Section):
    metric: str = Field(
        "val_loss", description="What a trial is judged by: a validation metric the task reports."
    )
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize losses and perplexities, maximize everything else."
    )
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe",
        description="tpe (Bayesian, Optuna's default), random, or grid (every combination of lists "
        "and stepped ranges).",
    )
    trials: int = Field(20, ge=1, description="Trials in the study, over all workers.")
    pruner: Literal["hyperband", "median", "none"] = Field(
        "hyperband", description="Stops trials whose validation passes lag; a diverged loss always stops."
    )
    startup_trials: int = Field(
        2, ge=0, description="Trials that run to the end before the median pruner compares against them."
    )
    seed: int = Field(0, description="The sampler's seed (each trial's train.seed stays the recipe's).")
    space: dict[str, Parameter] = Field(default_factory=dict, description="Recipe path -> what to try.")
    paired: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Value sets that move together (Axolotl's paired sweeps): each item sets several "
        "paths at once, and the search picks one item per trial.",
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="Trials to run first, as {path: value} (known good settings)."
    )
    study_name: str | None = Field(None, description="Default: the recipe's name.")
    memory: str | None = Field(
        None,
        description="Memory each trial must fit in, e.g. 24GB (default: the GPU's, or the RAM): "
        "`tunelab plan` estimates each trial first and skips one that would not fit.",
    )

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchConfig:
        if not self.space and not self.paired:
            raise ValueError("search needs a space (or paired value sets)")
        return self

    @property
    def minimize(self) -> bool:
        if self.direction is not None:
            return self.direction == "minimize"
        known = better(self.metric)  # the one table of directions, as early stopping reads it
        if known is not None:
            return known == "lower"
        return any(word in self.metric for word in ("loss", "perplexity", "error"))
