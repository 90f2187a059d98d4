"""What every task's scoring shares: the held-out split and its records, the forgetting check and the
scores of generated answers (eval.metrics). Each task's own baselines and scores are its hooks
(evaluation/task_scores.py). Called by the runner; each takes what it needs and returns plain dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import Accelerator
from rich.console import Console

from tunelab.config import Recipe
from tunelab.data.formats import load_split
from tunelab.data.pipeline import PreparedData, Records
from tunelab.data.records import Chat
from tunelab.evaluation import generative
from tunelab.evaluation.forgetting import forgetting_entry
from tunelab.evaluation.forgetting import score as score_reference
from tunelab.models.methods import is_adapter


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
    scores = generative.score_answers(answers, asked, recipe.eval.metrics, prefix)
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
