"""Each built-in task's evaluation hooks (tasks/registry.py): its baselines before training, its scores
after training, and what its validation passes add to the loss pass. They take a TaskContext and return
plain dicts; the task modules (tunelab/tasks/) name them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from tunelab.config.validation_metrics import ENTITY_SCORES, generates_at_validation
from tunelab.data.records import Chat, record_text
from tunelab.data.tokenize import LengthPolicy
from tunelab.evaluation import generative
from tunelab.evaluation.baselines import chat_baselines, encoder_baselines, few_shot_chats
from tunelab.evaluation.context import TaskContext
from tunelab.evaluation.metrics import classification_scores, predicted_labels
from tunelab.evaluation.scoring import chat_records, format_metrics, split_prefix, split_records
from tunelab.evaluation.tagging import entity_scores, gold_tags, headline, predicted_tags, tagging_baselines
from tunelab.training.loop import eval_batches

Baselines = tuple[dict[str, Any], dict[str, list[str]]]  # scores by baseline, generated answers by baseline
Scores = Callable[[], dict[str, float]]

# ---------------------------------------------------------------------------------------------
# Baselines: the base model (or no model) on the held-out split, before training


def classify_baselines(ctx: TaskContext) -> Baselines:
    """Zero-shot (the nearest label name or description) and few-shot (nearest centroid of k examples
    per class) with the pre-trained encoder's embeddings."""
    recipe, split = ctx.recipe, ctx.split
    if not recipe.eval.baselines or split is None or ctx.data.label_map is None:
        return {}, {}
    ctx.model.to(ctx.accelerator.device)
    scores = encoder_baselines(
        ctx.model,
        ctx.tokenizer,
        ctx.data.splits["train"],
        ctx.data.splits[split],
        ctx.data.label_map,
        prefix=split_prefix(split),
        k=recipe.eval.few_shot_k,
        seed=recipe.train.seed,
        descriptions=recipe.eval.label_descriptions,
    )
    return _chosen(ctx, scores), {}


def chat_baselines_of(ctx: TaskContext) -> Baselines:
    """The base model's loss on the held-out answers zero-shot and with k seeded shots; with
    eval.metrics, also its generated answers, scored."""
    recipe, split = ctx.recipe, ctx.split
    if not recipe.eval.baselines or split is None:
        return {}, {}
    k, seed = recipe.eval.few_shot_k, recipe.train.seed
    ctx.model.to(ctx.accelerator.device)
    train, scored = (chat_records(ctx.records, ctx.cached_files, s, ctx.data) for s in ("train", split))
    policy = LengthPolicy(recipe.train.max_seq_len, "truncate", recipe.data.min_tokens)
    scores = chat_baselines(
        ctx.model,
        ctx.tokenizer,
        train,
        scored,
        policy,
        ctx.accelerator,
        prefix=split_prefix(split),
        k=k,
        seed=seed,
    )
    answers: dict[str, list[str]] = {}
    if recipe.eval.metrics:
        few, _, _ = few_shot_chats(ctx.tokenizer, train, scored, k=k, seed=seed, max_len=policy.max_seq_len)
        for name, chats in (("zero_shot", scored), ("few_shot", few)):
            if name in recipe.eval.baselines:
                answers[name], generated = _generated(ctx, chats, split_prefix(split))
                scores[name].update(generated)
    return _chosen(ctx, scores), answers


def tagging_baselines_of(ctx: TaskContext) -> Baselines:
    """All-O and the majority tag of each word in train: no model, so they are always scored."""
    split = ctx.split
    if split is None or ctx.data.label_map is None:
        return {}, {}
    gold = gold_tags(ctx.data.splits[split], ctx.label_names)
    train, scored = (split_records(ctx.records, ctx.cached_files, s, ctx.data) for s in ("train", split))
    tagged = tagging_baselines(train, gold, scored, split_prefix(split))
    ctx.console.print(f"baselines (no model): {shown(tagged)}")
    return tagged, {}


def seq2seq_baselines(ctx: TaskContext) -> Baselines:
    """An encoder-decoder's baseline is the base model as it is (its loss before training is scored for
    every run). Few-shot is not scored: an encoder-decoder is not prompted with worked examples, and a
    T5 or BART reads shots in its source as more text to transform."""
    split = ctx.split
    if split is None or "zero_shot" not in ctx.recipe.eval.baselines:
        return {}, {}
    prefix, answers = split_prefix(split), {}
    scores: dict[str, Any] = {"note": "few-shot is not scored for an encoder-decoder"}
    if ctx.recipe.eval.metrics:
        ctx.model.to(ctx.accelerator.device)
        chats = chat_records(ctx.records, ctx.cached_files, split, ctx.data)
        answers["zero_shot"], generated = _generated(ctx, chats, prefix)
        scores.update(generated)
        ctx.console.print(f"baselines (base model): {shown({'zero_shot': scores})}")
    return {"zero_shot": scores}, answers


def _chosen(ctx: TaskContext, scores: dict[str, Any]) -> dict[str, Any]:
    """The baselines the recipe asks for, printed with their notes."""
    chosen: dict[str, Any] = {name: scores[name] for name in ctx.recipe.eval.baselines}
    ctx.console.print(f"baselines (base model, k={ctx.recipe.eval.few_shot_k} for few-shot): {shown(chosen)}")
    for name, s in chosen.items():
        if s.get("note"):
            ctx.console.print(f"[yellow]note:[/] {name.replace('_', '-')}: {s['note']}")
    return chosen


def shown(baselines: dict[str, Any]) -> str:
    def numbers(scores: dict[str, Any]) -> dict[str, float]:
        return {key: v for key, v in scores.items() if isinstance(v, float) and not key.startswith("shots_")}

    return ", ".join(f"{name} {format_metrics(numbers(s))}" for name, s in baselines.items())


def _generated(ctx: TaskContext, chats: list[Chat], prefix: str) -> tuple[list[str], dict[str, float]]:
    """The model's answers to the chats' last questions, and their scores under eval.metrics."""
    asked = generative.ask(chats)
    answers = generative.answer(
        ctx.model, ctx.tokenizer, asked, max_new_tokens=ctx.recipe.eval.max_new_tokens
    )
    return answers, generative.score_answers(answers, asked, ctx.recipe.eval.metrics, prefix)


# ---------------------------------------------------------------------------------------------
# After training: eval.json's parts, and the metrics they add


def classify_after_training(ctx: TaskContext, metrics: dict[str, Any]) -> dict[str, Any]:
    """Full scores and the confusion matrix of the fine-tuned model on the held-out split, beside the
    baselines scored on the same rows before training; with eval.bias, the bias audit."""
    split = ctx.split
    if split is None or ctx.data.label_map is None:
        return {}
    prefix, names = split_prefix(split), ctx.label_names
    batches = eval_batches(ctx.data.splits[split], ctx.recipe.train.batch_size, ctx.pad_id, ctx.accelerator)
    y_true, y_pred = predicted_labels(ctx.model, batches, ctx.accelerator)
    scores = classification_scores(y_true, y_pred, names)
    scored_before = {name: dict(s) for name, s in ctx.baselines.items()}
    if ctx.before_training:
        scored_before["untrained_head"] = dict(ctx.before_training)
    metrics[f"{prefix}_macro_f1"] = scores["macro"]["f1"]
    scored: dict[str, Any] = {
        "split": split,
        "split_prefix": prefix,
        "fine_tuned": {
            f"{prefix}_accuracy": scores["accuracy"],
            f"{prefix}_loss": metrics.get(f"{prefix}_loss"),
        },
        "baselines": scored_before,
        "classification": scores,
        "confusion_matrix": scores["confusion_matrix"],
        "labels": names,
    }
    if ctx.recipe.eval.bias is not None:
        scored["bias"] = _bias(ctx)
    return scored


def _bias(ctx: TaskContext) -> dict[str, Any]:
    """eval.bias: identity terms against labels in train, and per subgroup the fine-tuned model's
    accuracy and AUCs on the held-out split. Its warnings go to the notes and the terminal."""
    from tunelab.evaluation.bias import data_bias, model_bias
    from tunelab.evaluation.metrics import class_probabilities

    bias = ctx.recipe.eval.bias
    assert bias is not None
    train = split_records(ctx.records, ctx.cached_files, "train", ctx.data)
    result: dict[str, Any] = {
        "data": data_bias([record_text(r) for r in train], [r.label for r in train], bias)
    }
    split = ctx.split
    if split is not None and ctx.accelerator.num_processes == 1:
        rows = split_records(ctx.records, ctx.cached_files, split, ctx.data)
        batches = eval_batches(
            ctx.data.splits[split], ctx.recipe.train.batch_size, ctx.pad_id, ctx.accelerator
        )
        y_true, probs = class_probabilities(ctx.model, batches)
        assert len(rows) == len(y_true), "held-out records and examples out of step"
        texts = [record_text(r) for r in rows]
        result["model"] = {"split": split, **model_bias(texts, y_true, probs, ctx.label_names, bias)}
    for warning in [*result["data"]["warnings"], *result.get("model", {}).get("warnings", [])]:
        ctx.notes.append(f"bias: {warning}")
        ctx.console.print(f"[yellow]bias:[/] {warning}")
    return result


def tagging_after_training(ctx: TaskContext, metrics: dict[str, Any]) -> dict[str, Any]:
    """Entity scores per type and micro of the fine-tuned tagger on the held-out split, beside the
    model-free baselines scored on the same words."""
    split = ctx.split
    if split is None or ctx.data.label_map is None:
        return {}
    prefix, names = split_prefix(split), ctx.label_names
    gold, predicted = predicted_tags(
        ctx.model, ctx.data.splits[split], names, ctx.recipe.train.batch_size, ctx.pad_id, ctx.accelerator
    )
    fine_tuned = headline(prefix, gold, predicted)
    metrics.update(fine_tuned)
    return {
        "split": split,
        "split_prefix": prefix,
        "fine_tuned": fine_tuned,
        "entities": entity_scores(gold, predicted),
        "baselines": {name: dict(s) for name, s in ctx.baselines.items()},
        "tags": names,
    }


# ---------------------------------------------------------------------------------------------
# At every validation pass, beside the loss pass


def entity_validation_scores(ctx: TaskContext) -> Scores | None:
    """A tagger's entity scores at every validation pass (its word accuracy is the loss pass's)."""
    if "validation" not in ctx.data.splits or ctx.data.label_map is None:
        return None
    examples, names = ctx.data.splits["validation"], ctx.label_names

    def scores() -> dict[str, float]:
        gold, predicted = predicted_tags(
            ctx.model, examples, names, ctx.recipe.train.batch_size, ctx.pad_id, ctx.accelerator
        )
        tagged = headline("val", gold, predicted)
        return {f"val_{name}": tagged[f"val_{name}"] for name in ENTITY_SCORES}

    return scores


def generated_validation_scores(ctx: TaskContext) -> Scores | None:
    """Answers generated at every validation pass, when early stopping watches a score of them."""
    if "validation" not in ctx.data.splits or not generates_at_validation(ctx.recipe):
        return None
    questions = functools.cache(lambda: chat_records(ctx.records, ctx.cached_files, "validation", ctx.data))
    return lambda: _answer_validation(ctx, questions())


def _answer_validation(ctx: TaskContext, chats: list[Chat]) -> dict[str, float]:
    """Each process answers its share of the questions; every process scores all the answers, so all of
    them take the same early-stopping decision (a rank leaving the loop alone would hang the others)."""
    model, accelerator = ctx.accelerator.unwrap_model(ctx.model), ctx.accelerator
    asked = generative.ask(chats)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = asked[rank::world]
    was_training = model.training
    model.eval()
    try:
        max_new = ctx.recipe.eval.max_new_tokens
        answers = generative.answer(model, ctx.tokenizer, mine, max_new_tokens=max_new) if mine else []
    finally:
        model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        answers = gather_object(answers)  # rank 0's answers, then rank 1's, ...
        asked = [asked[i] for r in range(world) for i in range(r, len(asked), world)]
    return generative.score_answers(answers, asked, ctx.recipe.eval.metrics, "val")
