"""Rows to predict on, read through the training formats' own converters, minus the answer.

A prediction file is usually shaped like the training file, with the answers (or labels) left to the
model. Reading it with the same converters means a row parses the same way in both: an alpaca row
becomes the user turn training built, a ShareGPT speaker maps to the same role, the run's column
mapping applies, and a bad row gets the reason training would give it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import (
    MAX_LISTED,
    Columns,
    RowError,
    alpaca_prompt,
    chat_from_messages,
    labeled_text,
    sharegpt_messages,
    templated_prompt,
)
from tunelab.data.pair_formats import preference_prompt
from tunelab.data.readers import read_file
from tunelab.data.records import Message
from tunelab.errors import DataError


@dataclass(frozen=True)
class PredictInput:
    """One row: a prompt to answer (generative runs) or a text to score (classify, reward)."""

    messages: tuple[Message, ...] = ()
    words: tuple[str, ...] = ()  # a sentence to tag (token_classify)
    text: str = ""
    text_pair: str | None = None
    copied: dict[str, Any] = field(default_factory=dict)  # the row's `id`, copied into its prediction

    def chat(self) -> list[dict[str, str]]:
        """The prompt as the {role, content} messages a chat template renders."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


ROW_HELP = {
    "scoring": "each row needs the run's text column (and its text_pair column, if it has one), "
    'e.g. {"text": "block my card"}',
    "generative": 'each row needs "messages" or "conversations" (a conversation), "prompt" or '
    '"instruction", e.g. {"prompt": "Hello there!"}',
    "tagging": 'each row needs "tokens" (a list of words) or the run\'s text column (split at whitespace), '
    'e.g. {"tokens": ["Anna", "lives", "in", "Lisbon"]}',
}


def read_inputs(
    path: str | Path, columns: Columns, *, generative: bool, tagging: bool = False
) -> list[PredictInput]:
    """Every row of `path` as an input, or a DataError naming each bad row as file:line: reason."""
    kind = "tagging" if tagging else "generative" if generative else "scoring"
    convert = {"tagging": _words_input, "generative": _prompt_input, "scoring": _scoring_input}[kind]
    read = read_file(path)
    inputs, bad = [], []
    for row in read.rows:
        try:
            if row.error is not None:
                raise RowError(row.error)
            inputs.append(convert(columns.apply(row.fields), columns))
        except RowError as exc:
            bad.append(f"{read.path}:{row.where}: {exc}")
    if bad:
        more = [f"... and {len(bad) - MAX_LISTED} more"] if len(bad) > MAX_LISTED else []
        raise DataError(
            f"{read.path}: {len(bad)} bad row(s) out of {len(read.rows)}; nothing was predicted",
            problems=bad[:MAX_LISTED] + more,
            fix=ROW_HELP[kind],
        )
    if not inputs:
        raise DataError(f"{read.path}: no rows to predict")
    return inputs


def _scoring_input(fields: dict[str, Any], columns: Columns) -> PredictInput:
    text, pair = labeled_text(fields, columns)
    return PredictInput(text=text, text_pair=pair, copied=_copied(fields))


def _words_input(fields: dict[str, Any], columns: Columns) -> PredictInput:
    """A sentence to tag: its `tokens` as given (words as training read them), else its text split at
    whitespace (a CoNLL file's words are whitespace-free, so this is how they were split too)."""
    tokens = fields.get("tokens")
    if tokens is None:
        text = fields.get(columns.text)
        if not isinstance(text, str) or not text.split():
            names = ", ".join(sorted(fields)) or "none"
            raise RowError(f"no tokens and no {columns.text!r} text to split into words (fields: {names})")
        tokens = text.split()
    if (
        not isinstance(tokens, list)
        or not tokens
        or not all(isinstance(t, str) and t.strip() for t in tokens)
    ):
        raise RowError("tokens: expected a non-empty list of words")
    return PredictInput(words=tuple(tokens), copied=_copied(fields))


def _prompt_input(fields: dict[str, Any], columns: Columns) -> PredictInput:
    if columns.prompt_template is not None and not {"messages", "conversations", "instruction"} & set(fields):
        # A row for a run trained with data.prompt_template: the prompt is written as training wrote it.
        fields = {**fields, "prompt": templated_prompt(fields, columns)}
    if columns.system_prompt and not fields.get("system"):
        fields = {**fields, "system": columns.system_prompt}
    return PredictInput(messages=prompt_messages(fields), copied=_copied(fields))


def prompt_messages(fields: dict[str, Any]) -> tuple[Message, ...]:
    """The conversation a row asks the model to continue, found by the row's telltale field as format
    detection finds it: messages (chat), conversations (ShareGPT), instruction (alpaca), prompt.

    A conversation's final assistant turn is the answer to generate again, so it is left out.
    """
    system = fields.get("system")
    read = _PROMPT_READERS.get(next((name for name in _PROMPT_READERS if name in fields), ""))
    if read is None:
        names = ", ".join(sorted(fields)) or "none"
        raise RowError(f"no messages, conversations, prompt or instruction field (fields: {names})")
    messages = read(fields)
    if system is not None and not isinstance(system, str):
        raise RowError("system: expected text")
    if system and not any(m.role == "system" for m in messages):
        messages = (Message("system", system), *messages)
    if messages[-1].role != "user":
        raise RowError(_NO_USER_TURN)
    return messages


_NO_USER_TURN = "messages: the conversation must end with a user turn (before any final answer)"


def _conversation_prompt(messages: Any) -> tuple[Message, ...]:
    """A conversation minus its final assistant turn, read as training reads conversations."""
    ends_with_answer = (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and messages[-1].get("role") == "assistant"
    )
    if not ends_with_answer:
        return chat_from_messages(messages, needs_answer=False)
    if len(messages) == 1:
        raise RowError(_NO_USER_TURN)
    return chat_from_messages(messages[:-1], needs_answer=False)


_PROMPT_READERS: dict[str, Callable[[dict[str, Any]], tuple[Message, ...]]] = {
    "messages": lambda f: _conversation_prompt(f["messages"]),
    "conversations": lambda f: _conversation_prompt(sharegpt_messages(f)),
    "instruction": lambda f: (Message("user", alpaca_prompt(f)),),
    "prompt": lambda f: preference_prompt(f["prompt"]),
}


def _copied(fields: dict[str, Any]) -> dict[str, Any]:
    return {"id": fields["id"]} if "id" in fields else {}
