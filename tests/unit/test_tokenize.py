"""The loss mask covers exactly the assistant tokens, whatever the chat template."""

from __future__ import annotations

from typing import Any

import pytest

from tunelab.data.records import Chat, Message
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy, collate, tokenize_chats

CHAT = Chat(
    messages=(
        Message("system", "Answer briefly."),
        Message("user", "Where is my order?"),
        Message("assistant", "It was due on Monday."),
        Message("user", "Can you block my card?"),
        Message("assistant", "Yes: blocked."),
    ),
    source="test:1",
)

LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '<|im_end|>\n\n' + m['content'] | trim + '</s>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\n\n' }}{% endif %}"
)


def labelled_runs(tokenizer: Any, example: dict) -> list[str]:
    """Decode each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def test_builtin_chatml_masks_exactly_the_assistant_turns(tokenizer: Any) -> None:
    assert ensure_chat_template(tokenizer) == "chatml"
    (example,), stats = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=512))
    # Each answer and its end-of-turn marker carry the loss; system, user and template text do not.
    assert labelled_runs(tokenizer, example) == ["It was due on Monday.<|im_end|>", "Yes: blocked.<|im_end|>"]
    assert stats.truncated == 0


def test_the_tokenizers_own_template_is_used_and_masked(tokenizer: Any) -> None:
    tokenizer.chat_template = LLAMA3_LIKE
    assert ensure_chat_template(tokenizer) == "tokenizer"
    (example,), _ = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=512))
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert labelled_runs(tokenizer, example) == ["It was due on Monday.</s>", "Yes: blocked.</s>"]


def test_weight_zero_turns_carry_no_loss(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    messages = list(CHAT.messages)
    messages[2] = Message("assistant", "It was due on Monday.", weight=0)
    (example,), _ = tokenize_chats(tokenizer, [Chat(tuple(messages), "t:1")], LengthPolicy(max_seq_len=512))
    assert labelled_runs(tokenizer, example) == ["Yes: blocked.<|im_end|>"]


def test_end_truncation_keeps_the_prefix_and_counts_it(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    (full,), _ = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=512))
    policy = LengthPolicy(max_seq_len=len(full["input_ids"]) - 3, side="end")
    (cut,), stats = tokenize_chats(tokenizer, [CHAT], policy)
    assert stats.truncated == 1
    assert cut["input_ids"] == full["input_ids"][: len(cut["input_ids"])]


LONG_PROMPT = Chat(
    messages=(
        Message("system", "Summarise."),
        Message("user", "Summarise the dialogue. " + " ".join(f"Amy: line {i}." for i in range(12))),
        Message("assistant", "Amy greets Bob."),
    ),
    source="long:1",
)


def test_prompt_truncation_cuts_the_user_turn_and_keeps_the_whole_answer(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    (full,), _ = tokenize_chats(tokenizer, [LONG_PROMPT], LengthPolicy(max_seq_len=512))
    limit = len(full["input_ids"]) - 20
    (cut,), stats = tokenize_chats(tokenizer, [LONG_PROMPT], LengthPolicy(max_seq_len=limit))
    assert stats.truncated == 1 and len(cut["input_ids"]) == limit
    assert labelled_runs(tokenizer, cut) == ["Amy greets Bob.<|im_end|>"]  # cut at the end, it would be gone
    text = tokenizer.decode(cut["input_ids"])
    # The template's markers, the system turn and the instruction at the prompt's start are all kept:
    # the removed tokens are the last 20 of the user turn.
    assert text.startswith(
        "<|im_start|>system\nSummarise.<|im_end|>\n<|im_start|>user\nSummarise the dialogue."
    )
    assert text.rstrip().endswith("<|im_end|>\n<|im_start|>assistant\nAmy greets Bob.<|im_end|>")
    # Exactly one block of 20 tokens went, and it ended where the user turn ends.
    ids, kept = full["input_ids"], cut["input_ids"]
    (k,) = [k for k in range(len(kept)) if ids[:k] + ids[k + 20 :] == kept]
    assert tokenizer.convert_ids_to_tokens(ids[k + 20]) == "<|im_end|>"
    assert "Amy: line 11." not in text and "Amy: line 3." in text


def test_prompt_truncation_cuts_the_earliest_user_turn_first(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    (full,), _ = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=512))
    (cut,), _ = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=len(full["input_ids"]) - 2))
    text = tokenizer.decode(cut["input_ids"])
    assert "Can you block my card?" in text and "Where is my order?" not in text
    assert labelled_runs(tokenizer, cut) == labelled_runs(tokenizer, full)


def test_prompt_truncation_cuts_the_end_when_the_answers_alone_do_not_fit(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    answer = "Amy greets Bob and they talk about the weather for a long while. " * 4
    chat = Chat(messages=(Message("user", "Summarise: hi"), Message("assistant", answer)), source="t:1")
    (full,), _ = tokenize_chats(tokenizer, [chat], LengthPolicy(max_seq_len=512, side="end"))
    limit = len(full["input_ids"]) - 30  # more than the user turn holds
    (cut,), _ = tokenize_chats(tokenizer, [chat], LengthPolicy(max_seq_len=limit))
    assert cut["input_ids"] == full["input_ids"][:limit]  # the whole question, then the answer's start


def test_examples_without_assistant_tokens_after_truncation_are_reported(tokenizer: Any) -> None:
    ensure_chat_template(tokenizer)
    examples, stats = tokenize_chats(tokenizer, [CHAT], LengthPolicy(max_seq_len=8))
    assert examples == []
    assert stats.without_targets == ["test:1"]


def test_collate_pads_right_and_masks_padding() -> None:
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


@pytest.mark.parametrize("with_pair", [False, True])
def test_classification_examples_carry_label_ids(tokenizer: Any, with_pair: bool) -> None:
    from tunelab.data.records import Labeled
    from tunelab.data.tokenize import LengthPolicy, tokenize_labeled

    record = Labeled(text="lost my card", label="card", text_pair="please help" if with_pair else None)
    (example,), stats = tokenize_labeled(
        tokenizer, [record], {"balance": 0, "card": 1}, LengthPolicy(max_seq_len=4)
    )
    assert example["label"] == 1
    assert len(example["input_ids"]) == 4 and stats.truncated == 1


def test_pretraining_text_is_a_target_everywhere_and_long_documents_are_chunked(tokenizer: Any) -> None:
    from tunelab.data.records import Text
    from tunelab.data.tokenize import tokenize_texts

    short = Text("Hello there!", source="t:1")
    long = Text("The quick brown fox jumps over the lazy dog. " * 6, source="t:2")
    examples, stats = tokenize_texts(tokenizer, [short, long], LengthPolicy(max_seq_len=16))
    first = examples[0]
    assert first["labels"] == first["input_ids"]  # the loss is on every token
    assert first["input_ids"][-1] == tokenizer.eos_token_id  # documents end with EOS
    assert tokenizer.decode(first["input_ids"], skip_special_tokens=True) == "Hello there!"
    long_ids = [t for e in examples[1:] for t in e["input_ids"]]
    assert all(len(e["input_ids"]) <= 16 for e in examples)
    # Cut into consecutive chunks: nothing lost but a trailing one-token chunk, if any.
    full = tokenizer(long.text)["input_ids"] + [tokenizer.eos_token_id]
    assert long_ids == full[: len(long_ids)] and len(full) - len(long_ids) <= 1
    assert stats.truncated == 1 and stats.examples == 2
