"""Rows to predict on, read through the training formats' own converters, minus the answer.

A prediction file is usually shaped like the training file, with the answers (or labels) left to the
model. Reading it with the same converters means a row parses the same way in both: an alpaca row
becomes the user turn training built, a ShareGPT speaker maps to the same role, the run's column
mapping applies, and a bad row gets the reason training would give it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.data.chat_formats import chat_from_messages, sharegpt_messages, tool_chat
from tunelab.data.fields import Columns, RowError
from tunelab.data.formats import MAX_LISTED, alpaca_prompt, labeled_text, templated_prompt
from tunelab.data.pair_formats import preference_prompt
from tunelab.data.readers import ReadResult, read_file
from tunelab.data.records import Message
from tunelab.data.templates import message_dicts, tool_dicts
from tunelab.errors import DataError


@dataclass(frozen=True)
class PredictInput:
    """One row: a prompt to answer (generative runs) or a text to score (classify, reward)."""

    messages: tuple[Message, ...] = ()
    tools: tuple[str, ...] = ()  # the functions the model may call, as the row's `tools` gives them
    words: tuple[str, ...] = ()  # a sentence to tag (token_classify)
    text: str = ""
    text_pair: str | None = None
    # The row's columns as the file has them (all, or those `keep` named), carried into its prediction.
    copied: dict[str, Any] = field(default_factory=dict)

    def chat(self) -> list[dict[str, Any]]:
        """The prompt as the messages a chat template renders (with their tool calls and results)."""
        return message_dicts(self.messages)

    def tool_list(self) -> list[dict[str, Any]] | None:
        """The row's tools as a chat template reads them; None when it has none."""
        return tool_dicts(self.tools)


ROW_HELP = {
    "scoring": "each row needs the run's text column (and its text_pair column, if it has one), "
    'e.g. {"text": "block my card"}',
    "generative": 'each row needs "messages" or "conversations" (a conversation), "prompt" or '
    '"instruction", e.g. {"prompt": "Hello there!"}',
    "tagging": 'each row needs "tokens" (a list of words) or the run\'s text column (split at whitespace), '
    'e.g. {"tokens": ["Anna", "lives", "in", "Lisbon"]}',
}


def read_inputs(
    path: str | Path,
    columns: Columns,
    *,
    generative: bool,
    tagging: bool = False,
    keep: Sequence[str] | None = None,
) -> list[PredictInput]:
    """Every row of `path` as an input, or a DataError naming each bad row as file:line: reason.

    Each input carries its row's columns as read, before the run's column mapping (so an output row
    holds the file's own columns): all of them, or only those `keep` names. A `keep` name that no row
    has is refused, and so is each row without one (a JSON lines row may lack a field).
    """
    kind = "tagging" if tagging else "generative" if generative else "scoring"
    convert = {"tagging": _words_input, "generative": _prompt_input, "scoring": _scoring_input}[kind]
    read = read_file(path)
    if keep is not None:
        _refuse_unknown_columns(read, keep)
    inputs, bad, lacking = [], [], 0
    unkept: list[str] = []
    for row in read.rows:
        try:
            if row.error is not None:
                raise RowError(row.error)
            item = convert(columns.apply(row.fields), columns)
        except RowError as exc:
            bad.append(f"{read.path}:{row.where}: {exc}")
            continue
        missing = [name for name in keep or () if name not in row.fields]
        unkept.extend(f"{read.path}:{row.where}: no {name!r} column to keep" for name in missing)
        lacking += bool(missing)
        inputs.append(replace(item, copied=_kept(row.fields, keep)))
    if bad:
        raise DataError(
            f"{read.path}: {len(bad)} bad row(s) out of {len(read.rows)}; nothing was predicted",
            problems=_listed(bad),
            fix=ROW_HELP[kind],
        )
    if unkept:
        raise DataError(
            f"{read.path}: {lacking} row(s) lack a column that --keep names; nothing was predicted",
            problems=_listed(unkept),
            fix="--keep only columns every row has, or add them to those rows",
        )
    if not inputs:
        raise DataError(f"{read.path}: no rows to predict")
    return inputs


def _listed(problems: list[str]) -> list[str]:
    more = [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
    return problems[:MAX_LISTED] + more


def _refuse_unknown_columns(read: ReadResult, keep: Sequence[str]) -> None:
    """A `keep` name that no row of the file has: a misspelt option, refused with the file's columns."""
    found = dict.fromkeys(name for row in read.parsed for name in row.fields)
    unknown = [name for name in keep if name not in found]
    if unknown:
        raise DataError(
            f"--keep names {', '.join(map(repr, unknown))} but {read.path} has no such column",
            fix=f"keep some of its columns: {', '.join(found) or '(none)'}",
        )


def _kept(fields: dict[str, Any], keep: Sequence[str] | None) -> dict[str, Any]:
    if keep is None:
        return dict(fields)
    return {name: fields[name] for name in keep if name in fields}


def _scoring_input(fields: dict[str, Any], columns: Columns) -> PredictInput:
    text, pair = labeled_text(fields, columns)
    return PredictInput(text=text, text_pair=pair)


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
    return PredictInput(words=tuple(tokens))


def _prompt_input(fields: dict[str, Any], columns: Columns) -> PredictInput:
    if columns.prompt_template is not None and not {"messages", "conversations", "instruction"} & set(fields):
        # A row for a run trained with data.prompt_template: the prompt is written as training wrote it.
        fields = {**fields, "prompt": templated_prompt(fields, columns)}
    if columns.system_prompt and not fields.get("system"):
        fields = {**fields, "system": columns.system_prompt}
    chat = tool_chat(prompt_messages(fields), fields)  # its tools, its calls checked against them
    return PredictInput(messages=chat.messages, tools=chat.tools)


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
    if messages[-1].role not in ("user", "tool"):
        raise RowError(_NO_USER_TURN)
    return messages


_NO_USER_TURN = (
    "messages: the conversation must end with a user turn or tool results (before any final answer)"
)


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
