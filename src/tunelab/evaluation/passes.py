"""The passes over a held-out split, during training and after it: the loss pass over the whole split,
then each dataset's own rows in a multi-dataset run (`val_<dataset>_loss`); at validation passes also the
scores the loss pass cannot give (a tagger's entity scores; generated answers when early stopping
watches them), so that early stopping can watch any metric the task reports."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.config import Recipe
from tunelab.config.validation_metrics import ENTITY_SCORES, generates_at_validation
from tunelab.data.pipeline import PreparedData
from tunelab.data.records import Chat
from tunelab.data.tokenize import Example
from tunelab.evaluation import generative
from tunelab.evaluation.metrics import evaluate
from tunelab.evaluation.scoring import split_prefix
from tunelab.evaluation.tagging import headline, predicted_tags
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import Objective, collate_for

Scores = Callable[[], dict[str, float]]


@dataclass
class SplitEvaluator:
    model: Any
    objective: Objective
    task: str
    batch_size: int
    data: PreparedData
    pad_id: int
    accelerator: Any
    validation_extras: Scores | None = None  # see validation_extras below

    def __call__(self, split: str) -> dict[str, float]:
        examples, metrics = self.data.splits[split], {}
        for name, subset in [("", examples), *per_dataset(examples)]:
            prefix = f"{split_prefix(split)}_{name}" if name else split_prefix(split)
            batches = eval_batches(
                subset, self.batch_size, self.pad_id, self.accelerator, collate_for(self.task)
            )
            metrics.update(evaluate(self.model, batches, self.objective, self.task, self.accelerator, prefix))
        if split == "validation" and self.validation_extras is not None:
            metrics.update(self.validation_extras())
        return metrics


def validation_extras(
    recipe: Recipe, model: Any, tokenizer: Any, data: PreparedData, chats: Callable[[], list[Chat]],
    accelerator: Any,
) -> Scores | None:  # fmt: skip
    """The validation scores beyond the loss pass, for this recipe (None: there are none). The test split's
    are scored once after training (evaluation/scoring.py), so only validation passes need these."""
    if "validation" not in data.splits:
        return None
    if recipe.task == "token_classify" and data.label_map is not None:
        names = sorted(data.label_map, key=data.label_map.__getitem__)
        examples = data.splits["validation"]

        def entity_scores() -> dict[str, float]:
            gold, predicted = predicted_tags(
                model, examples, names, recipe.train.batch_size, tokenizer.pad_token_id, accelerator
            )
            scores = headline("val", gold, predicted)
            return {
                f"val_{name}": scores[f"val_{name}"] for name in ENTITY_SCORES
            }  # accuracy: the loss pass's

        return entity_scores
    if generates_at_validation(recipe):
        questions = functools.cache(chats)  # read once, asked at every pass
        return lambda: _generated_scores(
            recipe, accelerator.unwrap_model(model), tokenizer, questions(), accelerator
        )
    return None


def _generated_scores(
    recipe: Recipe, model: Any, tokenizer: Any, chats: list[Chat], accelerator: Any
) -> dict[str, float]:
    """Each process answers its share of the questions; every process scores all the answers, so all of
    them take the same early-stopping decision (a rank leaving the loop alone would hang the others)."""
    asked = generative.ask(chats)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = asked[rank::world]
    was_training = model.training
    model.eval()
    try:
        answers = (
            generative.answer(model, tokenizer, mine, max_new_tokens=recipe.eval.max_new_tokens)
            if mine
            else []
        )
    finally:
        model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        answers = gather_object(answers)  # rank 0's answers, then rank 1's, ...
        asked = [asked[i] for r in range(world) for i in range(r, len(asked), world)]
    return generative.score(answers, [a.reference for a in asked], recipe.eval.metrics, "val")


def per_dataset(examples: list[Example]) -> list[tuple[str, list[Example]]]:
    names = [str(e["dataset"]) for e in examples if e.get("dataset")]
    if not names:
        return []
    return [(name, [e for e in examples if e.get("dataset") == name]) for name in dict.fromkeys(names)]
