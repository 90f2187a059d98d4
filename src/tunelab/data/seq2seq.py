"""Encoder-decoder data for `task: seq2seq` (T5, BART, Marian): a source text in, a target text out.

Rows come through the chat converters (prompt/completion, alpaca, column-mapped rows with
`data.prompt_template`), so every format and prompt setting sft has works here too. A conversation
must be one exchange: an optional system message, one user message (the source) and one assistant
message (the target). The system message, if any, goes before the source, as T5's task prefixes do.

Encoder-decoder models are not chat models: no chat template is applied, and the tokenizer adds its
own special tokens to each side (T5 ends both with `</s>`, BART wraps them in `<s> ... </s>`), as
`tokenizer(source, text_target=target)` does in the transformers examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tunelab.data.records import Chat
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    Example,
    LengthPolicy,
    TokenizeStats,
    length_verdict,
    pad_rows,
)
from tunelab.errors import DataError


def source_text(messages: Sequence[Mapping[str, str]], source: str = "") -> str:
    """The encoder's input from a prompt's messages: system text (if any), a blank line, the user text."""
    roles = [m["role"] for m in messages]
    if roles not in (["user"], ["system", "user"]):
        where = f"{source}: " if source else ""
        raise DataError(
            f"{where}a seq2seq row is one source and one target; this one has turns {[*roles, 'assistant']}",
            fix="give each row one prompt and one completion (multi-turn chats need task: sft)",
        )
    return "\n\n".join(m["content"] for m in messages)


def seq2seq_pair(chat: Chat) -> tuple[str, str]:
    """(source, target) of a one-exchange conversation."""
    *prompt, last = chat.messages
    if last.role != "assistant":
        raise DataError(f"{chat.source}: a seq2seq row needs a target (the answer), and this one has none")
    return source_text([{"role": m.role, "content": m.content} for m in prompt], chat.source), last.content


def encode_source(tokenizer: Any, text: str, max_len: int | None = None) -> list[int]:
    """The encoder's ids, with the tokenizer's special tokens, as training encoded them."""
    truncate = {"truncation": True, "max_length": max_len} if max_len else {}
    return list(tokenizer(text, **truncate)["input_ids"])


def tokenize_seq2seq(
    tokenizer: Any, chats: list[Chat], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """input_ids from the source and labels from the target; each side is held to max_seq_len on its own
    (they go through different stacks). Over-long sides are re-encoded with truncation, so each keeps
    its closing special token, and the pair counts once as truncated."""
    stats = TokenizeStats()
    examples: list[Example] = []
    for chat in chats:
        stats.examples += 1
        source, target = seq2seq_pair(chat)
        ids, labels = encode_source(tokenizer, source), target_ids(tokenizer, target)
        if (reason := length_verdict(max(len(ids), len(labels)), policy)) is not None:
            stats.drop(reason, chat.source)
            continue
        if max(len(ids), len(labels)) > policy.max_seq_len:
            stats.truncated += 1
            ids = encode_source(tokenizer, source, policy.max_seq_len)
            labels = target_ids(tokenizer, target, policy.max_seq_len)
        examples.append({"input_ids": ids, "labels": labels})
    return examples, stats


def target_ids(tokenizer: Any, text: str, max_len: int | None = None) -> list[int]:
    """The decoder's labels, ending with EOS: the model must learn to stop, and a tokenizer that adds
    no EOS of its own (T5's and BART's do) gets one appended, as pre-training text does."""
    eos = tokenizer.eos_token_id
    ids = list(tokenizer(text_target=text)["input_ids"])
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    if max_len is not None and len(ids) > max_len:
        ids = [*ids[: max_len - 1], ids[-1]]  # cut the text, keep the closing token
    return ids


def collate_seq2seq(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Sources right-padded (masked out of attention), targets right-padded with IGNORE_INDEX: the two
    sides have their own widths."""
    width = max(len(e["input_ids"]) for e in examples)
    target_width = max(len(e["labels"]) for e in examples)
    return {
        "input_ids": pad_rows([e["input_ids"] for e in examples], width, pad_token_id),
        "attention_mask": pad_rows([[1] * len(e["input_ids"]) for e in examples], width, 0),
        "labels": pad_rows([e["labels"] for e in examples], target_width, IGNORE_INDEX),
    }
