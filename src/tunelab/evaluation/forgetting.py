"""Catastrophic-forgetting check: a reference set scored before and after fine-tuning.

A reference is general text (scored by perplexity) or multiple-choice questions (`question`,
`choices`, `answer`, as MMLU; scored by accuracy, picking the choice whose text has the highest
log-likelihood after the question, as lm-evaluation-harness's `acc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.readers import read_file
from tunelab.errors import DataError
from tunelab.training.objectives import align_logits


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class Reference:
    path: Path
    questions: list[Question]
    texts: list[str]

    @property
    def metric(self) -> str:
        return "accuracy" if self.questions else "perplexity"


def load_reference(path: str | Path) -> Reference:
    read = read_file(path)
    rows = [row.fields for row in read.parsed]
    if rows and {"question", "choices", "answer"} <= set(rows[0]):
        questions = [
            Question(str(r["question"]), tuple(str(c) for c in r["choices"]), int(r["answer"])) for r in rows
        ]
        return Reference(read.path, questions, [])
    texts = [str(r["text"]) for r in rows if str(r.get("text", "")).strip()]
    if not texts:
        raise DataError(
            f"{read.path}: a reference is multiple choice (question, choices, answer) or text",
            fix="check eval.reference",
        )
    return Reference(read.path, [], texts)


@torch.no_grad()
def score(
    model: Any, tokenizer: Any, reference: Reference, batch_size: int = 16, max_len: int = 512
) -> float:
    was_training = model.training
    model.eval()
    try:
        if reference.questions:
            return _choice_accuracy(model, tokenizer, reference.questions, batch_size, max_len)
        return _perplexity(model, tokenizer, reference.texts, batch_size, max_len)
    finally:
        model.train(was_training)


def _choice_accuracy(
    model: Any, tokenizer: Any, questions: list[Question], batch_size: int, max_len: int
) -> float:
    pairs = []  # (question index, choice index, context ids, continuation ids)
    for q, item in enumerate(questions):
        context = tokenizer(f"{item.question}\nAnswer:", add_special_tokens=False)["input_ids"]
        for c, choice in enumerate(item.choices):
            continuation = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            keep = max_len - len(continuation)  # the context is cut from the left if too long
            pairs.append((q, c, context[-keep:], continuation))
    loglik = [0.0] * len(pairs)
    # Batches of similar length waste little on padding (MMLU contexts run from 10 to over 1,000 tokens).
    order = sorted(range(len(pairs)), key=lambda j: len(pairs[j][2]) + len(pairs[j][3]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        values = continuation_logliks(model, tokenizer, [(pairs[j][2], pairs[j][3]) for j in chunk])
        for j, value in zip(chunk, values, strict=True):
            loglik[j] = value
    best: dict[int, tuple[float, int]] = {}
    for (q, c, _, _), value in zip(pairs, loglik, strict=True):
        if q not in best or value > best[q][0]:
            best[q] = (value, c)
    return sum(best[q][1] == item.answer for q, item in enumerate(questions)) / len(questions)


def continuation_logliks(model: Any, tokenizer: Any, items: list[tuple[list[int], list[int]]]) -> list[float]:
    """Sum of log P(continuation token | everything before it), per (context, continuation)."""
    rows = [ctx + cont for ctx, cont in items]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    logprobs = F.log_softmax(align_logits(logits, width).float(), -1)
    out = []
    for i, (ctx, cont) in enumerate(items):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
        out.append(float(logprobs[i, positions, torch.tensor(cont, device=device)].sum()))
    return out


def _perplexity(model: Any, tokenizer: Any, texts: list[str], batch_size: int, max_len: int) -> float:
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            truncation=True,
            max_length=max_len,
            padding=True,
            return_tensors="pt",
        )
        ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        logits = align_logits(
            model(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids.size(1)
        ).float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(
            F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
        )
        count += int((targets != -100).sum())
    return math.exp(min(total / max(count, 1), 50.0))


def forgetting_entry(reference: Reference, before: float, after: float, tolerance: float) -> dict[str, Any]:
    """The change, relative to before; a warning when the score got worse by more than `tolerance`."""
    higher_is_better = reference.metric == "accuracy"
    drop = before - after if higher_is_better else after - before
    worse = drop / before if before else 0.0  # nothing to lose from a score of 0
    return {
        "reference": str(reference.path),
        "metric": reference.metric,
        "before": before,
        "after": after,
        "change": after - before,
        "relative_worsening": worse,
        "tolerance": tolerance,
        "warning": worse > tolerance,
    }
