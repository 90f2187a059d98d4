"""reward: a scalar reward model trained on preference pairs (Bradley-Terry on one score per answer);
scored by how often it scores the chosen answer above the rejected one."""

from __future__ import annotations

from typing import Any

from tunelab.config.validation_metrics import REWARD_STATS
from tunelab.tasks.registry import SCALAR_SCORE, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.pairs import tokenize_preferences

    return tokenize_preferences(tokenizer, records, policy)


def collate(examples: list[Any], pad_token_id: int) -> Any:
    from tunelab.data.pairs import collate_pairs

    return collate_pairs(examples, pad_token_id)


def objective(recipe: Any, model: Any, class_weights: Any) -> Any:
    from tunelab.training.preference import reward_objective

    return reward_objective()


REWARD = register_task(
    TaskSpec(
        name="reward",
        head=SCALAR_SCORE,
        record_kinds=("preference",),
        tokenize=tokenize,
        collate=collate,
        objective=objective,
        validation_metrics=("loss", *REWARD_STATS),
        main_metrics=("reward_accuracy", "loss"),
        chat_template=True,
        virtual_tokens=False,
        rows_per_example=2,
        evaluable=False,  # its validation metrics are its scores: a pair file has no single answer
    )
)
