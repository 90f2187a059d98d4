"""Which way each metric a run reports is better: what early stopping and a search watch, read from one
table (validation_metrics.py says which metrics each task's validation pass logs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Better = Literal["lower", "higher"]

# Every metric a run reports, by its name after the split (val_, test_) and a dataset's name: which way
# is better. None marks a diagnostic: it says how the model moves, not whether it got better (a DPO run's
# chosen rewards may fall while it ranks more pairs right; desirable_share is a property of the data).
BETTER: dict[str, Better | None] = {
    "loss": "lower",
    "perplexity": "lower",
    "accuracy": "higher",  # classify: examples; token_classify: tagged words
    "macro_f1": "higher",
    "reward_accuracy": "higher",  # pairs ranked right (kto: examples on the right side of z)
    "reward_margin": "higher",
    "reward_chosen": None,
    "reward_rejected": None,
    "reward_desirable": None,
    "reward_undesirable": None,
    "kl": None,
    "desirable_share": None,
    "entity_precision": "higher",
    "entity_recall": "higher",
    "entity_f1": "higher",
    "exact_match": "higher",
    "rouge1": "higher",
    "rouge2": "higher",
    "rougeL": "higher",
    "bleu": "higher",
    "chrf": "higher",
    "tool_name_accuracy": "higher",
    "tool_args_exact_match": "higher",
    "tool_args_f1": "higher",
    "tool_unparsed": "lower",
    "tool_call_rate": "higher",
    "tool_false_calls": "lower",
}


def table_name(metric: str) -> str | None:
    """The table's name for `metric` (val_loss, test_entity_f1, val_<dataset>_loss): loss, entity_f1,
    loss; None for a name outside the table."""
    name = metric.removeprefix("val_").removeprefix("test_")
    if name in BETTER:
        return name
    # A dataset's own metric, val_<dataset>_<metric>: the longest known name it ends with.
    endings = [key for key in BETTER if name.endswith(f"_{key}")]
    return max(endings, key=len) if endings else None


def better(metric: str) -> Better | None:
    """Which way `metric` is better; None for a diagnostic or a name outside the table."""
    name = table_name(metric)
    return BETTER[name] if name is not None else None


def watchable(metrics: Sequence[str]) -> list[str]:
    """The metrics early stopping can watch: those with a direction that means better."""
    return [name for name in metrics if better(name) is not None]
