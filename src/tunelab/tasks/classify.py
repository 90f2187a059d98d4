"""classify: sequence classification. A new head over the encoder (or decoder), cross-entropy per
example (weighted by class with train.class_weights); scored by accuracy and the per-class report,
beside the encoder's own zero- and few-shot baselines."""

from __future__ import annotations

from typing import Any

from tunelab.tasks import sft
from tunelab.tasks.registry import SEQUENCE_CLASSIFIER, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.tokenize import tokenize_labeled

    return tokenize_labeled(tokenizer, records, label_map, policy)


def objective(recipe: Any, model: Any, class_weights: list[float] | None) -> Any:
    from tunelab.training.objectives import CLASSIFICATION_OBJECTIVE, weighted_classification_objective

    return (
        CLASSIFICATION_OBJECTIVE
        if class_weights is None
        else weighted_classification_objective(class_weights)
    )


def label_map(stage: Any, splits: dict[str, list[Any]], report: dict[str, Any]) -> dict[str, int]:
    from tunelab.data.pipeline import class_label_map

    return class_label_map(stage, splits, report)


def baselines(context: Any) -> Any:
    from tunelab.evaluation.task_scores import classify_baselines

    return classify_baselines(context)


def after_training(context: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    from tunelab.evaluation.task_scores import classify_after_training

    return classify_after_training(context, metrics)


CLASSIFY = register_task(
    TaskSpec(
        name="classify",
        head=SEQUENCE_CLASSIFIER,
        record_kinds=("labeled",),
        tokenize=tokenize,
        collate=sft.collate,
        objective=objective,
        validation_metrics=("loss", "accuracy"),
        main_metrics=("accuracy", "macro_f1", "loss"),
        label_map=label_map,
        baselines=baselines,
        after_training=after_training,
        classes=True,
        private=True,
    )
)
