"""KTO's examples: one answer each, desirable or not, and the batch that scores them.

Rated rows (`Rated`) become one example each. Preference pairs become two, as TRL's KTOTrainer unpairs
them: the chosen answer desirable, the rejected one undesirable. The pairs are split here, at
tokenisation, not when the file is read, so every step before (dedup, the split, the leakage check,
the content screen's pair balance) still sees each pair whole: its two answers never land in
different splits. Both answers are encoded and cut as DPO's are (`pairs.encode_pair`), and a pair that
DPO would leave out is left out whole, so report.json's counts mean the same for both objectives.

A batch of B examples has 2B rows: the examples (0..B-1), then B mismatched rows (B..2B-1), where row
B+i is prompt i followed by the completion of example (i+1) mod B. KTO's reference point (the KL
estimate, training/preference.py) is read from them. They are made when the batch is collated, so
the mismatched completions are exactly the batch's own, paired with other prompts (as TRL's
`_get_kl_dataset` intends).
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.pairs import (
    Encoded,
    collate_pairs,
    encode_answer,
    encode_pair,
    truncate_keep_end,
)
from tunelab.data.records import Preference, Rated
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    Example,
    LengthPolicy,
    TokenizeStats,
    collate,
    count_causal_targets,
    length_verdict,
    require_fast,
)

DESIRABLE = "_desirable"  # the batch key of the labels: underscored, so the model never receives it


def tokenize_rated(
    tokenizer: Any, records: list[Rated | Preference], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """KTO examples ({input_ids, labels, desirable}) from rated rows and from preference pairs."""
    require_fast(tokenizer, "to map the loss mask")
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in records:
        if isinstance(record, Preference):
            pair = encode_pair(tokenizer, record, policy, stats)
            if pair is not None:
                examples += [_example(pair[0], True), _example(pair[1], False)]
            continue
        encoded = _encode_rated(tokenizer, record, policy, stats)
        if encoded is not None:
            examples.append(_example(encoded, record.label))
    return examples, stats


def _encode_rated(
    tokenizer: Any, record: Rated, policy: LengthPolicy, stats: TokenizeStats
) -> Encoded | None:
    """The prompt and completion encoded, cut as a pair's answers are (the prompt's oldest tokens go)."""
    stats.examples += 1
    encoded = encode_answer(tokenizer, record, record.completion)
    if (reason := length_verdict(len(encoded[0]), policy)) is not None:
        stats.drop(reason, record.source)
        return None
    if len(encoded[0]) > policy.max_seq_len:
        stats.truncated += 1
        encoded = truncate_keep_end(encoded, policy.max_seq_len)
    if count_causal_targets(encoded[1]) == 0:
        stats.drop("no_targets", record.source)
        return None
    return encoded


def _example(encoded: Encoded, desirable: bool) -> Example:
    return {"input_ids": encoded[0], "labels": encoded[1], "desirable": int(desirable)}


def collate_rated(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """2B right-padded rows: the examples, then the mismatched rows; `_desirable` holds the B labels."""
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    rows += [mismatched(e, examples[(i + 1) % len(examples)]) for i, e in enumerate(examples)]
    batch = collate(rows, pad_token_id)
    batch[DESIRABLE] = torch.tensor([bool(e["desirable"]) for e in examples], dtype=torch.bool)
    return batch


def mismatched(prompt_of: Example, completion_of: Example) -> dict[str, list[int]]:
    """One example's prompt followed by another's completion (labels on the completion only).

    It is cut to the longer of the two examples by dropping the prompt's oldest tokens, as a too-long
    example is: both are within max_seq_len, so this row is too, and the batch gets no wider.
    """
    prompt_ids = prompt_of["input_ids"][: _answer_start(prompt_of["labels"])]
    start = _answer_start(completion_of["labels"])
    completion_ids, completion_labels = completion_of["input_ids"][start:], completion_of["labels"][start:]
    row = (prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_labels)
    longest = max(len(prompt_of["input_ids"]), len(completion_of["input_ids"]))
    ids, labels = truncate_keep_end(row, longest)
    return {"input_ids": ids, "labels": labels}


def _answer_start(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def collate_preference(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """task preference's batches: pairs (DPO, IPO, ORPO) or rated examples (KTO), as the examples are."""
    if "chosen_input_ids" in examples[0]:
        return collate_pairs(examples, pad_token_id)
    return collate_rated(examples, pad_token_id)
