"""token_classify scores: entity-level precision, recall and F1, per type and micro-averaged, as
seqeval computes them (the CoNLL convention: an entity counts only when its span and type are both
right), beside two baselines that need no model.

- all_O: every word tagged O. Token accuracy is already high on NER data (most words are outside every
  entity), and the entity F1 is 0. A fine-tuned tagger's token accuracy means little without this.
- majority_tag: each word gets the tag it has most often in train (O for words train never shows).
  This is the memorising baseline that the CoNLL-2003 shared task reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from tunelab.data.records import Tagged
from tunelab.data.tagged import OUTSIDE
from tunelab.data.tokenize import IGNORE_INDEX, Example
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import model_inputs

AVERAGES = ("micro avg", "macro avg", "weighted avg")


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """seqeval's entity-level scores: {micro: {precision, recall, f1}, per_type: {PER: {..., support}}}."""
    from seqeval.metrics import classification_report

    report = classification_report(
        [list(s) for s in gold], [list(s) for s in predicted], output_dict=True, zero_division=0
    )
    per_type = {
        name: {key: float(row[key]) for key in ("precision", "recall", "f1-score")}
        | {"support": int(row["support"])}
        for name, row in report.items()
        if name not in AVERAGES
    }
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    return {
        "micro": {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
        },
        "per_type": {name: _renamed(scores) for name, scores in sorted(per_type.items())},
    }


def _renamed(scores: dict[str, Any]) -> dict[str, Any]:
    return {("f1" if key == "f1-score" else key): value for key, value in scores.items()}


def token_accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    pairs = [(g, p) for gs, ps in zip(gold, predicted, strict=True) for g, p in zip(gs, ps, strict=True)]
    return sum(g == p for g, p in pairs) / max(len(pairs), 1)


def headline(
    prefix: str, gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """The numbers a run reports for a tagging: entity micro precision, recall, F1, and token accuracy."""
    micro = entity_scores(gold, predicted)["micro"]
    return {
        f"{prefix}_entity_precision": micro["precision"],
        f"{prefix}_entity_recall": micro["recall"],
        f"{prefix}_entity_f1": micro["f1"],
        f"{prefix}_accuracy": token_accuracy(gold, predicted),
    }


@torch.no_grad()
def predicted_tags(
    model: Any, examples: list[Example], names: list[str], batch_size: int, pad_id: int, accelerator: Any
) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag names per example, one per scored word (each word's first sub-token); under
    several processes, every process's examples (grouped by process, not in file order)."""
    was_training = model.training
    model.eval()
    gold: list[list[str]] = []
    predicted: list[list[str]] = []
    for batch in eval_batches(examples, batch_size, pad_id, accelerator):
        logits = model(**model_inputs(batch)).logits[:, -batch["input_ids"].size(1) :]
        for labels, guesses in zip(batch["labels"].tolist(), logits.argmax(-1).tolist(), strict=True):
            scored = [
                (label, guess) for label, guess in zip(labels, guesses, strict=True) if label != IGNORE_INDEX
            ]
            gold.append([names[label] for label, _ in scored])
            predicted.append([names[guess] for _, guess in scored])
    model.train(was_training)
    if accelerator.num_processes > 1:  # each process tagged its own slice: every process scores them all
        from accelerate.utils import gather_object

        gold, predicted = gather_object(gold), gather_object(predicted)
    return gold, predicted


def tagging_baselines(
    train: Sequence[Tagged], gold: Sequence[Sequence[str]], scored: Sequence[Tagged], prefix: str
) -> dict[str, dict[str, Any]]:
    """The all-O and majority-tag baselines on the scored words (`gold`: the tags of the words the
    model is scored on, in order; a truncated sentence scores only its first words)."""
    seen: dict[str, Counter[str]] = {}
    for record in train:
        for token, tag in zip(record.tokens, record.tags, strict=True):
            seen.setdefault(token, Counter())[tag] += 1
    majority = {token: counts.most_common(1)[0][0] for token, counts in seen.items()}
    all_o = [[OUTSIDE] * len(tags) for tags in gold]
    memorised = [
        [majority.get(token, OUTSIDE) for token in record.tokens[: len(tags)]]
        for record, tags in zip(scored, gold, strict=True)
    ]
    return {
        "all_O": {**headline(prefix, gold, all_o), "about": "every word tagged O"},
        "majority_tag": {
            **headline(prefix, gold, memorised),
            "about": "each word's most frequent training tag",
        },
    }


def gold_tags(examples: Sequence[Example], names: list[str]) -> list[list[str]]:
    """The tags of the words each example scores, read off its labels."""
    return [[names[label] for label in e["labels"] if label != IGNORE_INDEX] for e in examples]
