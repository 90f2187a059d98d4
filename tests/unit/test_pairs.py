"""Preference pairs: each answer's labels cover exactly that answer; lengths are judged per pair; the
collated batch holds chosen rows first, rejected after, with padding masked."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunelab.data.pairs import collate_pairs, tokenize_preferences
from tunelab.data.records import Chat, Message, Preference
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy, tokenize_chats
from tunelab.training.objectives import count_input_tokens, model_inputs

ORDER = Preference(
    prompt=(Message("system", "Answer briefly."), Message("user", "Where is my order?")),
    chosen="It was due on Monday.",
    rejected="Lost.",
    source="prefs:1",
)
# A prompt that already holds an assistant turn: shared history, which must not be labelled.
CARD = Preference(
    prompt=(
        Message("user", "Hello there!"),
        Message("assistant", "Good morning."),
        Message("user", "Can you block my card?"),
    ),
    chosen="Yes, your card is blocked.",
    rejected="No.",
    source="prefs:2",
)
WIDE = LengthPolicy(max_seq_len=512)


@pytest.fixture
def chatml(tokenizer: Any) -> Any:
    ensure_chat_template(tokenizer, "chatml")
    return tokenizer


def labelled_text(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each contiguous run of labelled tokens (and check a label is its token's id)."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def first_label(labels: list[int]) -> int:
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


def test_labels_cover_exactly_each_answer(chatml: Any) -> None:
    examples, stats = tokenize_preferences(chatml, [ORDER, CARD], WIDE)
    assert stats.examples == 2 and stats.truncated == 0 and stats.dropped == {}
    order, card = examples
    assert labelled_text(chatml, order["chosen_input_ids"], order["chosen_labels"]) == [
        "It was due on Monday.<|im_end|>"
    ]
    assert labelled_text(chatml, order["rejected_input_ids"], order["rejected_labels"]) == ["Lost.<|im_end|>"]
    # The assistant turn of the prompt is context, identical on both sides: only the final answer counts.
    assert labelled_text(chatml, card["chosen_input_ids"], card["chosen_labels"]) == [
        "Yes, your card is blocked.<|im_end|>"
    ]
    assert labelled_text(chatml, card["rejected_input_ids"], card["rejected_labels"]) == ["No.<|im_end|>"]
    # Both sides share the prompt's tokens up to where the answers start.
    start = first_label(card["chosen_labels"])
    assert start == first_label(card["rejected_labels"])
    assert card["chosen_input_ids"][:start] == card["rejected_input_ids"][:start]
    assert "Good morning." in chatml.decode(card["chosen_input_ids"][:start])


def test_each_side_is_tokenised_like_the_same_sft_chat(chatml: Any) -> None:
    (example,), _ = tokenize_preferences(chatml, [ORDER], WIDE)
    for side in ("chosen", "rejected"):
        chat = Chat(messages=(*ORDER.prompt, Message("assistant", getattr(ORDER, side))))
        (sft,), _ = tokenize_chats(chatml, [chat], WIDE)
        assert example[f"{side}_input_ids"] == sft["input_ids"]
        assert example[f"{side}_labels"] == sft["labels"]


def test_truncation_keeps_the_answer_and_cuts_the_oldest_prompt_tokens(chatml: Any) -> None:
    (full,), _ = tokenize_preferences(chatml, [ORDER], WIDE)
    n_chosen, n_rejected = len(full["chosen_input_ids"]), len(full["rejected_input_ids"])
    assert n_chosen > n_rejected + 2

    # Only the longer side is over: its prompt loses its first tokens, the answer is whole; the other
    # side is untouched.
    (example,), stats = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=n_chosen - 2))
    assert stats.truncated == 1 and stats.dropped == {}
    assert example["chosen_input_ids"] == full["chosen_input_ids"][2:]
    assert example["chosen_labels"] == full["chosen_labels"][2:]
    assert labelled_text(chatml, example["chosen_input_ids"], example["chosen_labels"]) == [
        "It was due on Monday.<|im_end|>"
    ]
    assert example["rejected_input_ids"] == full["rejected_input_ids"]

    # Both sides over: still one truncated pair, each keeping its whole answer.
    answer = n_chosen - first_label(full["chosen_labels"])
    (example,), stats = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=answer + 1))
    assert stats.truncated == 1
    assert len(example["chosen_input_ids"]) == len(example["rejected_input_ids"]) == answer + 1
    assert example["chosen_labels"][1:] == full["chosen_labels"][-answer:]

    # An answer longer than max_seq_len alone keeps its beginning.
    (example,), _ = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=3))
    start = first_label(full["chosen_labels"])
    assert example["chosen_input_ids"] == full["chosen_input_ids"][start : start + 3]


def test_every_drop_is_counted_with_its_reason_and_source(chatml: Any) -> None:
    (full,), _ = tokenize_preferences(chatml, [ORDER], WIDE)
    n_chosen, n_rejected = len(full["chosen_input_ids"]), len(full["rejected_input_ids"])
    prompt_len = first_label(full["chosen_labels"])

    # One token per side: the answer's first token, which nothing precedes, so nothing to predict.
    examples, stats = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=1))
    assert examples == [] and stats.dropped == {"no_targets": ["prefs:1"]}
    assert prompt_len > 1

    _, stats = tokenize_preferences(
        chatml, [ORDER], LengthPolicy(max_seq_len=n_chosen - 1, truncation="drop")
    )
    assert stats.dropped == {"over_max_seq_len": ["prefs:1"]} and stats.truncated == 0

    # The pair is judged by its longer side: within max_tokens on the rejected side is not enough.
    _, stats = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=512, max_tokens=n_rejected + 1))
    assert stats.dropped == {"too_long": ["prefs:1"]}

    _, stats = tokenize_preferences(chatml, [ORDER], LengthPolicy(max_seq_len=512, min_tokens=n_chosen + 1))
    assert stats.dropped == {"too_short": ["prefs:1"]}


def test_collate_pairs_puts_chosen_rows_first_and_masks_padding(chatml: Any) -> None:
    examples, _ = tokenize_preferences(chatml, [ORDER, CARD], WIDE)
    pad = chatml.pad_token_id
    batch = collate_pairs(examples, pad)
    rows = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
    labels = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
    width = max(len(r) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        n = len(row)
        assert batch["input_ids"][i, :n].tolist() == row and batch["labels"][i, :n].tolist() == label
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][i, n:] == pad).all() and (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert any(len(r) < width for r in rows)  # so the padding checks above checked something
    assert count_input_tokens(batch) == sum(len(r) for r in rows)
    assert set(model_inputs(batch)) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].dtype == torch.long
