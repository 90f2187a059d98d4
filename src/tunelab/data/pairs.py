"""Preference pairs -> two token sequences (prompt + chosen, prompt + rejected) -> one batch of 2B rows.

Each answer is rendered as the last assistant turn of a `Chat` and tokenised exactly like sft data
(`tokenize.tokenize_chats`): the labels are the answer's tokens (with its end-of-turn marker), so
`preference.sequence_logps` scores the answer and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.data.records import Chat, Message, Preference, Rated
from tunelab.data.templates import render_chat
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    Example,
    LengthPolicy,
    TokenizeStats,
    _in_spans,
    collate,
    count_causal_targets,
    length_verdict,
    require_fast,
)

Encoded = tuple[list[int], list[int]]  # (input ids, labels)


def tokenize_preferences(
    tokenizer: Any, records: list[Preference], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """Tokenise both sides of each pair; the length policy judges a pair by its longer sequence."""
    require_fast(tokenizer, "to map the loss mask")  # the answer spans become tokens through offsets
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in records:
        encoded = encode_pair(tokenizer, record, policy, stats)
        if encoded is None:
            continue
        chosen, rejected = encoded
        examples.append(
            {
                "chosen_input_ids": chosen[0],
                "chosen_labels": chosen[1],
                "rejected_input_ids": rejected[0],
                "rejected_labels": rejected[1],
            }
        )
    return examples, stats


def encode_pair(
    tokenizer: Any, record: Preference, policy: LengthPolicy, stats: TokenizeStats
) -> tuple[Encoded, Encoded] | None:
    """Both answers after the prompt, encoded and cut to fit; None (counted in `stats`) when the pair is
    left out. KTO's rows from a pair (data/rated.py) come from here too, so they are cut alike."""
    stats.examples += 1
    chosen = encode_answer(tokenizer, record, record.chosen)
    rejected = encode_answer(tokenizer, record, record.rejected)
    longest = max(len(chosen[0]), len(rejected[0]))
    if (reason := length_verdict(longest, policy)) is not None:
        stats.drop(reason, record.source)
        return None
    if longest > policy.max_seq_len:
        stats.truncated += 1  # once per pair, even when both sides are cut
        chosen, rejected = (
            truncate_keep_end(chosen, policy.max_seq_len),
            truncate_keep_end(rejected, policy.max_seq_len),
        )
    # A pair is only informative when both answers keep something to score.
    if count_causal_targets(chosen[1]) == 0 or count_causal_targets(rejected[1]) == 0:
        stats.drop("no_targets", record.source)
        return None
    return chosen, rejected


def collate_pairs(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows: chosen answers in rows 0..B-1, rejected in B..2B-1, right-padded.

    Stacking both halves lets one forward pass score every answer (and keeps the widths equal, so
    chosen row i and rejected row B+i see the same padding).
    """
    rows = [{"input_ids": e["chosen_input_ids"], "labels": e["chosen_labels"]} for e in examples]
    rows += [{"input_ids": e["rejected_input_ids"], "labels": e["rejected_labels"]} for e in examples]
    return collate(rows, pad_token_id)


def encode_answer(tokenizer: Any, record: Preference | Rated, answer: str) -> Encoded:
    """The record's prompt with `answer` as its last assistant turn, encoded; labels on the answer only."""
    return _encode(tokenizer, _answer_chat(record, answer))


def _answer_chat(record: Preference | Rated, answer: str) -> Chat:
    """The prompt with `answer` as the final assistant turn, which alone carries the loss mask."""
    # Assistant turns inside the prompt are shared history, identical on both sides: scoring them
    # would add the same number to both log-probabilities, so weight 0 leaves them out of the labels.
    prompt = tuple(
        Message(m.role, m.content, weight=0) if m.role == "assistant" else m for m in record.prompt
    )
    return Chat(messages=(*prompt, Message("assistant", answer)), source=record.source)


def _encode(tokenizer: Any, chat: Chat) -> Encoded:
    """Token ids, and labels that are the ids inside the answer span and IGNORE_INDEX elsewhere."""
    text, spans = render_chat(tokenizer, chat)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [
        tok if _in_spans(a, b, spans) else IGNORE_INDEX for tok, (a, b) in zip(ids, offsets, strict=True)
    ]
    return list(ids), labels


def truncate_keep_end(encoded: Encoded, max_len: int) -> Encoded:
    """Keep the end: the prompt loses its oldest tokens, the answer is kept (cut from the right only
    when it alone is longer than max_len). Cutting from the right, as sft does, would often remove the
    answer, which is all a preference pair is about (TRL's DPO keeps the end of the prompt likewise)."""
    ids, labels = encoded
    answer_start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    start = min(max(0, len(ids) - max_len), answer_start)
    return ids[start : start + max_len], labels[start : start + max_len]
