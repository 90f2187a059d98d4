"""Evaluation over a split (token-weighted loss for every task, accuracy for classification), and
pure metric functions over predictions: perplexity, token accuracy, classification scores, BLEU,
chrF, ROUGE, exact match."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import torch

from tunelab.tasks.registry import task_spec
from tunelab.training.objectives import Batch, Objective, model_inputs


@torch.no_grad()
def evaluate(
    model: Any, batches: Iterable[Batch], objective: Objective, task: str, accelerator: Any, prefix: str
) -> dict[str, float]:
    """Loss summed over targets then divided by their count, so it does not depend on batch size; the
    perplexity of a task that reports it, and the accuracy of a sequence classifier (one label per
    example: its logits' argmax)."""
    spec = task_spec(task)
    argmax_accuracy = spec.head.labels_examples
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    targets = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    correct = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    stat_sums: dict[str, torch.Tensor] = {}
    for batch in batches:
        out = objective.loss(model, batch)
        loss_sum += out.loss_sum.double()
        targets += objective.count_targets(batch)
        if argmax_accuracy:
            assert out.logits is not None
            correct += (out.logits.argmax(-1) == batch["labels"]).sum()
        for name, value in out.stats.items():
            stat_sums[name] = stat_sums.get(name, torch.zeros_like(targets)) + value.double()
    loss_sum, targets, correct = (accelerator.reduce(t, "sum") for t in (loss_sum, targets, correct))
    model.train(was_training)
    n = max(float(targets), 1.0)
    metrics = {f"{prefix}_loss": float(loss_sum) / n}
    if spec.perplexity:
        metrics[f"{prefix}_perplexity"] = math.exp(min(metrics[f"{prefix}_loss"], 50.0))
    if argmax_accuracy:
        metrics[f"{prefix}_accuracy"] = float(correct) / n
    for name, value in sorted(stat_sums.items()):
        metrics[f"{prefix}_{name}"] = float(accelerator.reduce(value, "sum")) / n
    return metrics


# ---------------------------------------------------------------------------------------------
# Pure metric functions. The scoring libraries (scikit-learn, sacrebleu, rouge-score) are imported
# inside the functions: the training runner imports this module, and it should not pay seconds of
# import time for metrics a run may never compute.

# exp(50) ≈ 5.2e21: far above any perplexity worth reading, far below float overflow (exp(710)).
# A diverged run (loss inf, or in the thousands) then reports a large finite number that stays
# JSON-serialisable and plottable instead of raising OverflowError. Same cap as `evaluate` above.
MAX_LOG_PERPLEXITY = 50.0


@torch.no_grad()
def predicted_labels(model: Any, batches: Iterable[Batch], accelerator: Any) -> tuple[list[int], list[int]]:
    """(true, predicted) class ids over every process's share of the batches, in a stable order."""
    from accelerate.utils import gather_object

    was_training = model.training
    model.eval()
    pairs: list[tuple[int, int]] = []
    for batch in batches:
        logits = model(**model_inputs(batch)).logits
        pairs += zip(batch["labels"].tolist(), logits.argmax(-1).tolist(), strict=True)
    model.train(was_training)
    gathered = gather_object(pairs) if accelerator.num_processes > 1 else pairs
    return [t for t, _ in gathered], [p for _, p in gathered]


def class_probabilities(model: Any, batches: Iterable[Batch]) -> tuple[list[int], list[list[float]]]:
    """(true class ids, softmax probabilities) per example, in batch order (one process)."""
    was_training = model.training
    model.eval()
    truth: list[int] = []
    probs: list[list[float]] = []
    with torch.no_grad():
        for batch in batches:
            logits = model(**model_inputs(batch)).logits.float()
            truth += batch["labels"].tolist()
            probs += torch.softmax(logits, dim=-1).tolist()
    model.train(was_training)
    return truth, probs


def perplexity(mean_loss: float) -> float:
    """exp(mean token loss), with the loss capped at MAX_LOG_PERPLEXITY; NaN stays NaN."""
    if math.isnan(mean_loss):
        return math.nan  # a NaN loss is a broken run; a capped number would hide it
    return math.exp(min(mean_loss, MAX_LOG_PERPLEXITY))


def mean_token_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[int, int]:
    """(correct, counted) next-token predictions of a causal LM: logits at t predict the label at t+1.

    Counts, not a ratio, so callers sum over batches and processes before dividing (a mean of
    per-batch means would weight short batches too heavily).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    predicted = logits[:, :-1].argmax(dim=-1)
    target = labels[:, 1:].to(predicted.device)
    counted = target != ignore_index
    correct = (predicted == target) & counted
    return int(correct.sum()), int(counted.sum())


def classification_scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Accuracy, P/R/F1 (per class, macro, micro) and the confusion matrix, as plain JSON types.

    `y_true`/`y_pred` hold class indices into `labels`. Shape of the result:
        {"accuracy": float,
         "macro": {"precision", "recall", "f1"}, "micro": {"precision", "recall", "f1"},
         "per_class": {label: {"precision", "recall", "f1", "support"}},
         "confusion_matrix": [[int]],  # rows = true class, columns = predicted, in `labels` order
         "labels": [str]}
    Every class in `labels` is scored, even one absent from both lists, so runs on different
    splits have the same keys and matrix size; undefined ratios are 0 (zero_division=0), which
    means an absent class pulls the macro average down, as in scikit-learn.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    _check_class_indices(y_true, y_pred, len(labels))
    indices = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=indices, average=None, zero_division=0
    )
    result: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=indices, average=average, zero_division=0
        )
        result[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    result["per_class"] = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=indices).tolist()
    result["labels"] = list(labels)
    return result


def _check_class_indices(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:  # not `not y_true`: numpy arrays refuse truthiness
        raise ValueError("no examples to score")
    outside = sorted({int(y) for y in (*y_true, *y_pred)} - set(range(n_labels)))
    if outside:
        # sklearn would silently drop them from P/R/F1 and the matrix, yet count them in accuracy.
        raise ValueError(f"class indices {outside} are outside labels (0..{n_labels - 1})")


# ---------------------------------------------------------------------------------------------
# Generated-text metrics. `references` is either one string per prediction or, per prediction, a
# list of acceptable strings (the number may vary between predictions).

References: TypeAlias = Sequence[str] | Sequence[Sequence[str]]


def bleu(predictions: Sequence[str], references: References) -> float:
    """sacrebleu corpus BLEU (0-100), its default 13a tokenisation; n-grams pooled over the corpus."""
    import sacrebleu

    return _sacrebleu_corpus_score(sacrebleu.corpus_bleu, predictions, references)


def chrf(predictions: Sequence[str], references: References) -> float:
    """sacrebleu corpus chrF (0-100; character n-grams, so it also suits morphologically rich text)."""
    import sacrebleu

    return _sacrebleu_corpus_score(sacrebleu.corpus_chrf, predictions, references)


def rouge(predictions: Sequence[str], references: References) -> dict[str, float]:
    """rouge-score ROUGE-1/2/L F-measure (0-1), averaged over examples, with Porter stemming.

    With several references an example scores its best one, chosen per ROUGE type
    (`RougeScorer.score_multi`): ROUGE-1 and ROUGE-L may come from different references.
    rouge-score's tokenizer keeps only [a-z0-9] after lowercasing, so text in other scripts scores 0;
    use chrF for such languages.
    """
    from rouge_score import rouge_scorer

    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    per_example = _references_per_example(predictions, references)
    totals = dict.fromkeys(types, 0.0)
    for prediction, refs in zip(predictions, per_example, strict=True):
        scores = scorer.score_multi(refs, prediction)
        for name in types:
            totals[name] += scores[name].fmeasure
    return {name: total / len(per_example) for name, total in totals.items()}


def exact_match(predictions: Sequence[str], references: References) -> float:
    """Share (0-1) of predictions equal to one of their references after `normalize_answer`."""
    per_example = _references_per_example(predictions, references)
    hits = sum(
        normalize_answer(prediction) in {normalize_answer(ref) for ref in refs}
        for prediction, refs in zip(predictions, per_example, strict=True)
    )
    return hits / len(per_example)


def normalize_answer(text: str) -> str:
    """Strip, collapse any run of whitespace to one space, casefold ('Straße' == 'STRASSE')."""
    return " ".join(text.split()).casefold()


def _references_per_example(predictions: Sequence[str], references: References) -> list[list[str]]:
    """Normalise `references` to one non-empty list of strings per prediction, checking lengths."""
    if isinstance(predictions, str) or isinstance(references, str):
        # A bare string is a Sequence[str] of characters; scoring it would be silently wrong.
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    per_example = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    empty = [i for i, refs in enumerate(per_example) if not refs]
    if empty:
        raise ValueError(f"examples {empty[:10]} have no reference")
    return per_example


def _sacrebleu_corpus_score(
    metric: Callable[..., Any], predictions: Sequence[str], references: References
) -> float:
    # Any: sacrebleu annotates streams as str only, yet documents None as "no reference here".
    streams: Any = _reference_streams(predictions, references)
    return float(metric(list(predictions), streams).score)


def _reference_streams(predictions: Sequence[str], references: References) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every example's k-th reference.

    Examples with fewer references are padded with None, which sacrebleu skips (an empty string
    would instead count as a real, empty reference).
    """
    per_example = _references_per_example(predictions, references)
    width = max(len(refs) for refs in per_example)
    return [[refs[k] if k < len(refs) else None for refs in per_example] for k in range(width)]
