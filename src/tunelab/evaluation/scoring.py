"""Scores a training run adds beside its own loss: base-model baselines, full classification scores
and the forgetting check. Called by the runner; each takes what it needs and returns plain dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from rich.console import Console

from tunelab.config import Recipe
from tunelab.data.formats import load_split
from tunelab.data.pipeline import PreparedData, Records
from tunelab.data.records import Chat, record_text
from tunelab.data.tokenize import LengthPolicy
from tunelab.evaluation import generative
from tunelab.evaluation.baselines import chat_baselines, encoder_baselines, few_shot_chats
from tunelab.evaluation.forgetting import forgetting_entry
from tunelab.evaluation.forgetting import score as score_reference
from tunelab.evaluation.metrics import classification_scores, predicted_labels
from tunelab.evaluation.tagging import entity_scores, gold_tags, headline, predicted_tags, tagging_baselines
from tunelab.models.methods import is_adapter
from tunelab.training.loop import eval_batches


def split_prefix(split: str) -> str:
    return {"validation": "val", "test": "test"}[split]


def held_out_split(data: PreparedData) -> str | None:
    """The split a run's headline scores come from: test, else validation (None when there is neither)."""
    return next((s for s in ("test", "validation") if s in data.splits), None)


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def chat_records(
    records: Records | None, cached_files: Path | None, split: str, data: PreparedData
) -> list[Chat]:
    """One split's cleaned conversations (see split_records). Plain-text rows (replay data mixed into
    instruction tuning) are not conversations and are skipped."""
    return [row for row in split_records(records, cached_files, split, data) if isinstance(row, Chat)]


def split_records(
    records: Records | None, cached_files: Path | None, split: str, data: PreparedData
) -> list[Any]:
    """One split's cleaned records: computed now, or read back from the cache's canonical JSONL.

    Both ways hold the same rows: the cache keeps only the rows that survived tokenisation, so rows it
    dropped (too long, no answer token left) are left out here too. Otherwise a few-shot baseline
    would draw its shots from another pool on a cache hit and change with the cache.
    """
    if records is not None:
        stats = data.stats.get(split)
        left_out = stats.left_out if stats is not None else set()
        rows = [row for row in records.splits[split] if row.source not in left_out]
    else:
        assert cached_files is not None
        rows = list(load_split(cached_files / f"{split}.jsonl").records)
    return rows


def score_baselines(
    recipe: Recipe,
    loaded: Any,
    data: PreparedData,
    records: Records | None,
    cached_files: Path | None,
    accelerator: Accelerator,
    console: Console,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Zero-/few-shot scores of the base model on the test split (else validation), before training,
    and, when eval.metrics asks for generated answers, those answers by baseline."""
    split = held_out_split(data)
    # Zero-/few-shot baselines exist for classification and chat; pretrain and preference runs compare
    # against the base model's own loss on the test split, which every run scores before training.
    if recipe.task == "token_classify" and split is not None and data.label_map is not None:
        names = sorted(data.label_map, key=data.label_map.__getitem__)
        gold = gold_tags(data.splits[split], names)
        train, scored = (split_records(records, cached_files, s, data) for s in ("train", split))
        tagged = tagging_baselines(train, gold, scored, split_prefix(split))
        console.print(f"baselines (no model): {_shown(tagged)}")
        return tagged, {}
    if recipe.task == "seq2seq" and split is not None and "zero_shot" in recipe.eval.baselines:
        return _seq2seq_zero_shot(recipe, loaded, records, cached_files, data, split, accelerator, console)
    if not recipe.eval.baselines or split is None or recipe.task not in ("sft", "classify"):
        return {}, {}
    k, seed = recipe.eval.few_shot_k, recipe.train.seed
    loaded.model.to(accelerator.device)
    if recipe.task == "classify":
        assert data.label_map is not None
        scores = encoder_baselines(
            loaded.model, loaded.tokenizer, data.splits["train"], data.splits[split], data.label_map,
            prefix=split_prefix(split), k=k, seed=seed, descriptions=recipe.eval.label_descriptions,
        )  # fmt: skip
    answers: dict[str, list[str]] = {}
    if recipe.task == "sft":
        train, scored = (chat_records(records, cached_files, s, data) for s in ("train", split))
        policy = LengthPolicy(recipe.train.max_seq_len, "truncate", recipe.data.min_tokens)
        scores = chat_baselines(
            loaded.model, loaded.tokenizer, train, scored, policy, accelerator,
            prefix=split_prefix(split), k=k, seed=seed,
        )  # fmt: skip
        if recipe.eval.metrics:
            few, _, _ = few_shot_chats(
                loaded.tokenizer, train, scored, k=k, seed=seed, max_len=policy.max_seq_len
            )
            for name, chats in (("zero_shot", scored), ("few_shot", few)):
                if name in recipe.eval.baselines:
                    answers[name], generated = _generated(recipe, loaded, chats, split_prefix(split))
                    scores[name].update(generated)
    chosen: dict[str, Any] = {name: scores[name] for name in recipe.eval.baselines}
    console.print(f"baselines (base model, k={recipe.eval.few_shot_k} for few-shot): {_shown(chosen)}")
    for name, s in chosen.items():
        if s.get("note"):
            console.print(f"[yellow]note:[/] {name.replace('_', '-')}: {s['note']}")
    return chosen, answers


def _seq2seq_zero_shot(
    recipe: Recipe,
    loaded: Any,
    records: Records | None,
    cached_files: Path | None,
    data: PreparedData,
    split: str,
    accelerator: Accelerator,
    console: Console,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """An encoder-decoder's baseline is the base model as it is (its loss before training is scored for
    every run). Few-shot is not scored: an encoder-decoder is not prompted with worked examples, and a
    T5 or BART reads shots in its source as more text to transform."""
    prefix, answers = split_prefix(split), {}
    scores: dict[str, Any] = {"note": "few-shot is not scored for an encoder-decoder"}
    if recipe.eval.metrics:
        loaded.model.to(accelerator.device)
        answers["zero_shot"], generated = _generated(
            recipe, loaded, chat_records(records, cached_files, split, data), prefix
        )
        scores.update(generated)
        console.print(f"baselines (base model): {_shown({'zero_shot': scores})}")
    return {"zero_shot": scores}, answers


def _shown(baselines: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {format_metrics({key: v for key, v in s.items() if isinstance(v, float) and not key.startswith('shots_')})}"
        for name, s in baselines.items()
    )


def tagging_eval(
    recipe: Recipe,
    model: Any,
    data: PreparedData,
    baselines: dict[str, dict[str, Any]],
    pad_id: int,
    accelerator: Accelerator,
) -> dict[str, Any] | None:
    """eval.json for token_classify: entity scores per type and micro, of the fine-tuned model on the
    test split (else validation), beside the model-free baselines scored on the same words (the run
    summary's `baselines`)."""
    split = held_out_split(data)
    if split is None or data.label_map is None:
        return None
    prefix = split_prefix(split)
    names = sorted(data.label_map, key=data.label_map.__getitem__)
    gold, predicted = predicted_tags(
        model, data.splits[split], names, recipe.train.batch_size, pad_id, accelerator
    )
    return {
        "split": split,
        "split_prefix": prefix,
        "fine_tuned": headline(prefix, gold, predicted),
        "entities": entity_scores(gold, predicted),
        "baselines": {name: dict(s) for name, s in baselines.items()},
        "tags": names,
    }


def _generated(
    recipe: Recipe, loaded: Any, chats: list[Chat], prefix: str
) -> tuple[list[str], dict[str, float]]:
    """A model's answers to the chats' last questions, and their scores under eval.metrics."""
    asked = generative.ask(chats)
    answers = generative.answer(
        loaded.model, loaded.tokenizer, asked, max_new_tokens=recipe.eval.max_new_tokens
    )
    return answers, generative.score(answers, [a.reference for a in asked], recipe.eval.metrics, prefix)


def forgetting_check(
    recipe: Recipe,
    model: Any,
    tokenizer: Any,
    reference: Any,
    forgetting_before: float | None,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """Score the reference after training; for adapters "before" is the same model with the adapter off,
    else `forgetting_before` (the run summary's: the reference scored before the first step)."""
    unwrapped = accelerator.unwrap_model(model)
    after = score_reference(unwrapped, tokenizer, reference)
    if is_adapter(unwrapped):
        with unwrapped.disable_adapter():  # the base model, without a second copy in memory
            before = score_reference(unwrapped, tokenizer, reference)
    else:
        assert forgetting_before is not None, "scored before the first step (runner)"
        before = forgetting_before
    return forgetting_entry(reference, before, after, recipe.eval.forgetting_tolerance)


def describe_forgetting(entry: dict[str, Any]) -> str:
    line = (
        f"forgetting check ({Path(entry['reference']).name}, {entry['metric']}): "
        f"{entry['before']:.4f} before -> {entry['after']:.4f} after"
    )
    if entry["warning"]:
        worse, allowed = 100 * entry["relative_worsening"], 100 * entry["tolerance"]
        line += f"  [warning: worse by {worse:.1f}%, over the {allowed:.0f}% tolerance]"
    return line


def classification_eval(
    recipe: Recipe,
    model: Any,
    data: PreparedData,
    baselines: dict[str, dict[str, Any]],
    before_training: dict[str, float],
    metrics: dict[str, Any],
    pad_id: int,
    accelerator: Accelerator,
) -> dict[str, Any] | None:
    """eval.json for classify: full scores and confusion matrix of the fine-tuned model on the test split
    (else validation), beside the baselines scored on the same rows before training (the run summary's
    `baselines`, and `before_training`: the untrained head)."""
    split = held_out_split(data)
    if split is None or data.label_map is None:
        return None
    prefix = split_prefix(split)
    names = sorted(data.label_map, key=data.label_map.__getitem__)
    batches = eval_batches(data.splits[split], recipe.train.batch_size, pad_id, accelerator)
    y_true, y_pred = predicted_labels(model, batches, accelerator)
    scores = classification_scores(y_true, y_pred, names)
    scored_before = {name: dict(s) for name, s in baselines.items()}
    if before_training:
        scored_before["untrained_head"] = dict(before_training)
    return {
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


def bias_eval(
    recipe: Recipe,
    model: Any,
    data: PreparedData,
    records: Records | None,
    cached_files: Path | None,
    pad_id: int,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """eval.bias: identity terms against labels in train, and per subgroup the fine-tuned model's
    accuracy and AUCs on the held-out split (test, else validation)."""
    from tunelab.evaluation.bias import data_bias, model_bias
    from tunelab.evaluation.metrics import class_probabilities

    assert recipe.eval.bias is not None and data.label_map is not None
    train = split_records(records, cached_files, "train", data)
    result: dict[str, Any] = {
        "data": data_bias([record_text(r) for r in train], [r.label for r in train], recipe.eval.bias)
    }
    split = held_out_split(data)
    if split is not None and accelerator.num_processes == 1:
        rows = split_records(records, cached_files, split, data)
        batches = eval_batches(data.splits[split], recipe.train.batch_size, pad_id, accelerator)
        y_true, probs = class_probabilities(model, batches)
        assert len(rows) == len(y_true), "held-out records and examples out of step"
        names = sorted(data.label_map, key=data.label_map.__getitem__)
        result["model"] = {
            "split": split,
            **model_bias([record_text(r) for r in rows], y_true, probs, names, recipe.eval.bias),
        }
    return result


def generative_eval(
    recipe: Recipe,
    model: Any,
    tokenizer: Any,
    chats: list[Chat],
    split: str,
    baselines: dict[str, dict[str, Any]],
    baseline_answers: dict[str, list[str]],
    console: Console,
) -> tuple[dict[str, float], list[generative.Asked], dict[str, list[str]]]:
    """The fine-tuned model's answers to the split's questions, scored under eval.metrics and printed
    beside the base model's zero- and few-shot scores (the run summary's `baselines`), with an example
    before and after.
    Returns (scores, what was asked, every model's answers) for generations.jsonl."""
    prefix = split_prefix(split)
    asked = generative.ask(chats)
    answers = generative.answer(model, tokenizer, asked, max_new_tokens=recipe.eval.max_new_tokens)
    scores = generative.score(answers, [a.reference for a in asked], recipe.eval.metrics, prefix)
    everything = {**baseline_answers, "fine_tuned": answers}
    rows = {name: baselines.get(name, {}) for name in baseline_answers}
    for line in generative.comparison(
        {**rows, "fine_tuned": scores}, recipe.eval.metrics, prefix, len(asked)
    ):
        console.print(line)
    before = everything.get("zero_shot")
    for i in generative.shown_examples(recipe.eval.show_examples, len(asked), recipe.train.seed):
        console.print(generative.example(asked[i], before[i] if before else None, answers[i]))
    return scores, asked, everything
