"""preference: DPO, IPO and ORPO on chosen and rejected answers, or KTO on answers rated desirable or
not (`preference.objective`). A pair is one batch row each for chosen and rejected; scored by its loss
and how often the chosen answer is ranked first (KTO: the KL estimate and the rewards by rating)."""

from __future__ import annotations

from typing import Any

from tunelab.config.validation_metrics import KTO_STATS, REWARD_STATS
from tunelab.tasks.registry import CAUSAL_LM, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.pairs import tokenize_preferences
    from tunelab.data.rated import tokenize_rated

    if (
        recipe.preference.objective == "kto"
    ):  # rated rows, and pairs split into a desirable and an undesirable one
        return tokenize_rated(tokenizer, records, policy)
    return tokenize_preferences(tokenizer, records, policy)


def collate(examples: list[Any], pad_token_id: int) -> Any:
    from tunelab.data.rated import collate_preference

    return collate_preference(examples, pad_token_id)


def objective(recipe: Any, model: Any, class_weights: Any) -> Any:
    from tunelab.training.preference import objective_for

    return objective_for(recipe.preference, model)


PREFERENCE = register_task(
    TaskSpec(
        name="preference",
        head=CAUSAL_LM,
        record_kinds=("preference",),
        kinds_by_objective={"kto": ("rated", "preference")},
        tokenize=tokenize,
        collate=collate,
        objective=objective,
        validation_metrics=("loss", *REWARD_STATS),
        metrics_by_objective={"kto": ("loss", *KTO_STATS)},
        main_metrics=("reward_accuracy", "loss"),
        chat_template=True,
        preference_section=True,
        rows_per_example=2,
        evaluable=False,  # its validation metrics are its scores: a pair file has no single answer
    )
)
