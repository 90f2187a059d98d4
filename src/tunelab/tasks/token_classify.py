"""token_classify: a tag per word (named entities). Cross-entropy on each word's first sub-token; scored
by entity precision, recall and F1 per type and micro (seqeval), beside all-O and majority-tag
baselines that need no model."""

from __future__ import annotations

from typing import Any

from tunelab.config.validation_metrics import ENTITY_SCORES
from tunelab.tasks import sft
from tunelab.tasks.registry import TOKEN_CLASSIFIER, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.tagged import tokenize_tagged

    return tokenize_tagged(tokenizer, records, label_map, policy)


def objective(recipe: Any, model: Any, class_weights: Any) -> Any:
    from tunelab.training.objectives import TOKEN_CLASSIFICATION_OBJECTIVE

    return TOKEN_CLASSIFICATION_OBJECTIVE


def label_map(stage: Any, splits: dict[str, list[Any]], report: dict[str, Any]) -> dict[str, int]:
    from tunelab.data.tagged import tag_map_of

    return tag_map_of(splits, report)


def baselines(context: Any) -> Any:
    from tunelab.evaluation.task_scores import tagging_baselines_of

    return tagging_baselines_of(context)


def after_training(context: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    from tunelab.evaluation.task_scores import tagging_after_training

    return tagging_after_training(context, metrics)


def validation_extras(context: Any) -> Any:
    from tunelab.evaluation.task_scores import entity_validation_scores

    return entity_validation_scores(context)


TOKEN_CLASSIFY = register_task(
    TaskSpec(
        name="token_classify",
        head=TOKEN_CLASSIFIER,
        record_kinds=("tagged",),
        tokenize=tokenize,
        collate=sft.collate,
        objective=objective,
        validation_metrics=("loss", "accuracy", *ENTITY_SCORES),
        main_metrics=("entity_f1", "accuracy", "loss"),
        label_map=label_map,
        baselines=baselines,
        after_training=after_training,
        validation_extras=validation_extras,
    )
)
