"""The metrics a run reports, which way each one is better, and which of them each task's validation
pass logs: what `train.early_stopping` may watch (checks.py) and which way it watches (the loop), read
from one table, so a new metric is added in one place."""

from __future__ import annotations

from tunelab.config.data_section import source_name
from tunelab.config.directions import BETTER, better, watchable
from tunelab.config.schema import RecipeSchema as Recipe
from tunelab.tasks.registry import task_spec

# training/preference.py: reward_stats (dpo, ipo, orpo, reward) and kto_stats.
REWARD_STATS = ("reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin")
KTO_STATS = ("kl", "reward_accuracy", "reward_desirable", "reward_undesirable", "desirable_share")

ENTITY_SCORES = ("entity_precision", "entity_recall", "entity_f1")

# The scores of generated answers, by the eval.metrics entry that asks for them (evaluation/generative.py).
GENERATED = {
    "exact_match": ("exact_match",),
    "rouge": ("rouge1", "rouge2", "rougeL"),
    "bleu": ("bleu",),
    "chrf": ("chrf",),
    "tool_calls": (
        "tool_name_accuracy",
        "tool_args_exact_match",
        "tool_args_f1",
        "tool_unparsed",
        "tool_call_rate",
        "tool_false_calls",
    ),
}
# A generating task's headline scores, best first (runs list, dashboard).
GENERATED_MAIN = ("tool_args_exact_match", "exact_match", "rougeL", "bleu", "chrf")

# Scored once, after training, on the held-out split (eval.json and the run's metrics), never at a
# validation pass: why, for the message that refuses them as an early-stopping metric.
AFTER_TRAINING: dict[str, str] = {
    "macro_f1": "classify's per-class report is computed once, after training",
}


def validation_metrics(recipe: Recipe) -> list[str]:
    """Every metric this recipe's validation pass logs, in the order `evaluate` writes them; each dataset
    of a multi-dataset run that has validation rows of its own adds its val_<dataset>_... metrics."""
    names = _logged(recipe)
    # A dataset's own rows get the loss pass's metrics; entity and generated scores are the whole split's.
    per_dataset = [name for name in names if name not in (*ENTITY_SCORES, *_generated(recipe))]
    datasets = [f"val_{name}" for name in _datasets_with_validation(recipe)]
    return [f"val_{name}" for name in names] + [f"{d}_{name}" for d in datasets for name in per_dataset]


def early_stopping_refusal(recipe: Recipe, metric: str) -> str | None:
    """Why `metric` cannot be watched by this recipe's early stopping, naming what can; None if it can."""
    generated = () if _sharded(recipe) else _generated(recipe)
    watched = {f"val_{name}" for name in (*_logged(recipe), *generated)}
    if metric in watched and better(metric) is not None:
        return None  # decided without reading data.train (partial.py: it may be the field that is wrong)
    base = metric.removeprefix("val_")
    # A dataset's own metric (val_<dataset>_loss) needs the datasets, so data.train; a metric of the whole
    # split does not (partial.py: data.train may be the field that did not parse).
    own = metric.startswith("val_") and base not in BETTER
    logged = validation_metrics(recipe) if own else [f"val_{name}" for name in _logged(recipe)]
    if metric in logged and better(metric) is not None:
        return None
    allowed = ", ".join(watchable([*logged, *(f"val_{name}" for name in generated)]))
    if metric in logged:
        return f"{metric} is a diagnostic with no direction that means better; watch one of {allowed}"
    if metric.startswith("val_") and base in AFTER_TRAINING:
        return f"{metric} is not logged at validation passes: {AFTER_TRAINING[base]}; watch one of {allowed}"
    if base in _generated(recipe):  # asked for by eval.metrics, so refused for the sharding
        return (
            f"{metric} scores answers generated at each validation pass, which needs whole weights on each "
            f"process; train.distributed {recipe.train.distributed} shards them. Watch one of {allowed}"
        )
    asked = next((entry for entry, names in GENERATED.items() if base in names), None)
    if asked is not None and task_spec(recipe.task).generates_answers:
        return (
            f"{metric} scores generated answers: add {asked} to eval.metrics (each validation pass then "
            f"generates answers to the validation split); or watch one of {allowed}"
        )
    kind = f"task {recipe.task}"
    if task_spec(recipe.task).metrics_by_objective:  # what it logs depends on preference.objective
        kind += f" (objective {recipe.preference.objective})"
    return f"the validation pass of {kind} logs no {metric}; watch one of {allowed}"


def _logged(recipe: Recipe) -> tuple[str, ...]:
    """The names (after val_) of what the recipe's task logs at each validation pass."""
    logged = task_spec(recipe.task).logged(recipe.preference.objective)
    return (*logged, *_generated(recipe)) if generates_at_validation(recipe) else logged


def _generated(recipe: Recipe) -> tuple[str, ...]:
    """The scores eval.metrics asks for, for a task whose answers are generated."""
    if not task_spec(recipe.task).generates_answers:
        return ()
    return tuple(name for entry in recipe.eval.metrics for name in GENERATED[entry])


def generates_at_validation(recipe: Recipe) -> bool:
    """Generating answers costs far more than a loss pass, so a validation pass generates only when early
    stopping watches a score of generated answers (val_rougeL, val_exact_match, ...)."""
    stopping = recipe.train.early_stopping
    watched = stopping is not None and stopping.metric.removeprefix("val_") in _generated(recipe)
    return watched and not _sharded(recipe)


def _sharded(recipe: Recipe) -> bool:
    return recipe.train.distributed in ("fsdp", "deepspeed")


def _datasets_with_validation(recipe: Recipe) -> list[str]:
    """Datasets whose validation rows are their own (data/pipeline.py's _load_mixture): a dataset's own
    validation file, or its share data.split.validation when no shared data.validation file is given.
    Replay data and the shared file's rows have no name of their own."""
    data = recipe.data
    if not data.multi_source:
        return []
    shares = data.validation is None and data.split.validation > 0
    return [source_name(s) for s in data.sources if s.validation is not None or shares]
