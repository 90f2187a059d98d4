"""Detect a file's format and convert each row, once, into a canonical record.

Formats: OpenAI chat (`messages`), ShareGPT (`conversations`), Alpaca (`instruction`/`input`/
`output`), prompt/completion, plain text, labelled text, multiple choice (MMLU style), preference
pairs (`prompt`/`chosen`/`rejected`, or HH-RLHF dialogues), KTO's rated rows (`prompt`/`completion`/
`label`) and HH-RLHF transcripts as chats (pair_formats.py holds the last three kinds' converters).
Every bad row becomes a
`file:where: reason` line; `on_error` decides whether they stop the run (fail) or are left out and
counted (skip). Nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunelab.data import hub
from tunelab.data.chat_formats import chat_from_messages, from_chat, from_sharegpt
from tunelab.data.fields import Columns, RowError
from tunelab.data.fields import text_value as _content
from tunelab.data.pair_formats import from_hh_dialogue, from_kto, from_openai_preference, from_preference
from tunelab.data.readers import ReadResult, Row, read_file
from tunelab.data.records import Chat, Labeled, Message, Preference, Rated, Record, Tagged, Text
from tunelab.data.tagged import tagged_from_fields
from tunelab.errors import DataError

MAX_LISTED = 20


@dataclass
class LoadedSplit:
    path: Path
    format: str
    records: list[Any]
    bad_rows: list[str] = field(default_factory=list)  # "file:where: reason", also for skipped rows
    total_rows: int = 0


# ---------------------------------------------------------------------------------------------
# Converters: fields -> record, raising RowError with the reason


def from_alpaca(fields: dict[str, Any], columns: Columns) -> Chat:
    user = alpaca_prompt(fields)
    output = _content(fields.get("output"), "output", required=True)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Chat(chat_from_messages(messages, fields.get("system")))


def alpaca_prompt(fields: dict[str, Any]) -> str:
    """The user turn an alpaca row becomes: its instruction, then its input (if any) after a blank line."""
    instruction = _content(fields.get("instruction"), "instruction", required=True)
    extra = fields.get("input") or ""
    if not str(extra).strip():
        return instruction
    return f"{instruction}\n\n{_content(extra, 'input', required=False)}"


def from_prompt_completion(fields: dict[str, Any], columns: Columns) -> Chat:
    prompt = templated_prompt(fields, columns)
    completion = _content(fields.get("completion"), "completion", required=True)
    return Chat((Message("user", prompt), Message("assistant", completion)))


def templated_prompt(fields: dict[str, Any], columns: Columns) -> str:
    """The user message of a prompt/completion row: its prompt, or data.prompt_template filled in."""
    if columns.prompt_template is None:
        return _content(fields.get("prompt"), "prompt", required=True)
    try:
        text = columns.prompt_template.format_map(fields)
    except KeyError as exc:
        names = ", ".join(sorted(fields)) or "none"
        raise RowError(f"prompt_template: the row has no field {exc.args[0]!r} (fields: {names})") from None
    return _content(text, "prompt_template", required=True)


def with_system_prompt(record: Record, system: str | None) -> Record:
    """A conversation (or a preference pair's prompt) with data.system_prompt first, unless it has one."""
    if not system:
        return record
    if isinstance(record, Chat) and not any(m.role == "system" for m in record.messages):
        return replace(record, messages=(Message("system", system), *record.messages))
    if isinstance(record, Preference | Rated) and not any(m.role == "system" for m in record.prompt):
        return replace(record, prompt=(Message("system", system), *record.prompt))
    return record


def from_text(fields: dict[str, Any], columns: Columns) -> Text:
    return Text(_content(fields.get(columns.text), columns.text, required=True))


def from_labeled(fields: dict[str, Any], columns: Columns) -> Labeled:
    text, pair = labeled_text(fields, columns)
    label = fields.get(columns.label)
    if label is None or (isinstance(label, str) and not label.strip()):
        raise RowError(f"{columns.label}: empty or missing")
    if isinstance(label, (dict, list, float)):
        raise RowError(f"{columns.label}: must be a string or an integer, got {label!r}")
    return Labeled(text=text, label=str(label).strip(), text_pair=pair)


def labeled_text(fields: dict[str, Any], columns: Columns) -> tuple[str, str | None]:
    """A labelled row's text and its pair (when the columns name one), without the label."""
    text = _content(fields.get(columns.text), columns.text, required=True)
    if not columns.text_pair:
        return text, None
    return text, _content(fields.get(columns.text_pair), columns.text_pair, required=True)


def from_multiple_choice(fields: dict[str, Any], columns: Columns) -> Labeled:
    """MMLU style {question, choices, answer}: the choices are lettered in the text, the label is the letter."""
    question = _content(fields.get("question"), "question", required=True)
    choices, answer = fields.get("choices"), fields.get("answer")
    if not isinstance(choices, list) or len(choices) < 2:
        raise RowError("choices: expected a list of two or more options")
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    if isinstance(answer, int) and 0 <= answer < len(choices):
        label = letters[answer]
    elif isinstance(answer, str) and answer.strip().upper() in letters:
        label = answer.strip().upper()
    else:
        raise RowError(f"answer: expected an index or a letter among {', '.join(letters)}, got {answer!r}")
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, choices, strict=True))
    return Labeled(text=f"{question}\n{options}", label=label)


def from_tagged(fields: dict[str, Any], columns: Columns) -> Tagged:
    try:
        return tagged_from_fields(fields.get("tokens"), fields.get("tags"))
    except ValueError as exc:
        raise RowError(str(exc)) from None


Converter = Callable[[dict[str, Any], Columns], Record]
CONVERTERS: dict[str, Converter] = {
    "chat": from_chat,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
    "text": from_text,
    "labeled": from_labeled,
    "multiple_choice": from_multiple_choice,
    "preference": from_preference,
    "openai_preference": from_openai_preference,
    "kto": from_kto,
    "hh_dialogue": from_hh_dialogue,
    "tagged": from_tagged,
}
FORMATS = tuple(CONVERTERS)
RECORD_KIND = {
    "chat": "chat",
    "sharegpt": "chat",
    "alpaca": "chat",
    "prompt_completion": "chat",
    "text": "text",
    "labeled": "labeled",
    "multiple_choice": "labeled",
    "preference": "preference",
    "openai_preference": "preference",
    "kto": "rated",
    "hh_dialogue": "chat",
    "tagged": "tagged",
}
FORMATS_FOR_KIND = {
    "chat": "chat (messages), sharegpt (conversations), alpaca (instruction/output), prompt/completion, "
    "or HH-RLHF transcripts (data.format: hh_dialogue)",
    "labeled": "labeled text (text + label columns) or multiple choice (question/choices/answer)",
    "text": "plain text (.txt, or a text column)",
    "preference": "preference pairs (prompt, chosen, rejected; or OpenAI's input/preferred_output)",
    "rated": "KTO rows (prompt, completion, label: true or false; with preference.objective: kto)",
    "tagged": "CoNLL (a token and its tag per line) or {tokens, tags} rows",
}


def detect_format(rows: list[Row], columns: Columns, kind: str | None = None) -> str | None:
    """The format whose telltale fields the first rows carry; None when nothing matches.

    `kind` (chat, labeled, ...) limits the search to formats that give the records a task needs, so
    a classification file missing its label column is not mistaken for plain text.
    """
    keys: set[str] = set()
    for row in rows[:50]:
        keys.update(row.fields)
    rules = [
        ("chat", {"messages"}),
        ("sharegpt", {"conversations"}),
        ("preference", {"chosen", "rejected"}),
        ("openai_preference", {"input", "preferred_output", "non_preferred_output"}),
        ("tagged", {"tokens", "tags"}),
        ("alpaca", {"instruction", "output"}),
        # Before prompt_completion and labeled, whose fields a KTO row also has: its label says whether
        # the completion is one to learn at all. (hh_dialogue is never detected: DialogSum has `dialogue` too.)
        ("kto", {"prompt", "completion", "label"}),
        ("prompt_completion", {"completion"} if columns.prompt_template else {"prompt", "completion"}),
        ("multiple_choice", {"question", "choices", "answer"}),
        ("labeled", {columns.text, columns.label}),
        ("text", {columns.text}),
    ]
    if kind is not None:
        rules = [(name, needed) for name, needed in rules if RECORD_KIND[name] == kind]
    return next((name for name, needed in rules if needed <= keys), None)


_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")  # IOB / BIOES entity tags


def looks_like_conll(rows: list[Row], sample: int = 200) -> bool:
    """Plain-text lines that are mostly `token ... TAG` pairs: a CoNLL file, which read as text would
    train on tag-suffixed words."""
    lines = [str(row.fields.get("text", "")).split() for row in rows[:sample]]
    lines = [parts for parts in lines if parts and not parts[0].startswith("-DOCSTART-")]
    tagged = sum(len(parts) >= 2 and bool(_TAG.match(parts[-1])) for parts in lines)
    return len(lines) >= 5 and tagged >= 0.9 * len(lines)


# ---------------------------------------------------------------------------------------------
# Loading a split


def load_split(
    path: str | Path,
    *,
    fmt: str = "auto",
    columns: Columns | None = None,
    on_error: str = "fail",
    text_unit: str = "line",
    kind: str | None = None,
    hub_split: str = "train",
    tag_column: int = -1,
) -> LoadedSplit:
    """Read one file (or a Hub dataset's split) into records.

    `kind` restricts auto-detection to formats giving that record kind; `hub_split` is the Hub split read
    when an `hf:org/name` source names none.
    """
    if hub.is_hub_spec(str(path)):
        return _load_hub_split(str(path), fmt, columns, on_error, text_unit, kind, hub_split)
    columns = columns or Columns()
    if fmt == "conll" or (
        fmt == "auto" and kind == "tagged" and Path(path).suffix.lower() in (".txt", ".conll")
    ):
        fmt, text_unit = "tagged", "conll"  # sentences of token-tag lines, read as {tokens, tags} rows
    read = read_file(path, text_unit=text_unit, tag_column=tag_column)
    if columns.rename:
        read.rows = [Row(row.where, columns.apply(row.fields), row.error) for row in read.rows]
    name = _format_of(read, fmt, columns, kind)
    _check_columns(read, name, columns)
    split = _converted(read, name, columns)
    if split.bad_rows and on_error == "fail":
        raise _bad_rows_error(split)
    if not split.records:
        raise DataError(f"{read.path}: no usable rows", problems=split.bad_rows[:MAX_LISTED])
    return split


def _format_of(read: ReadResult, fmt: str, columns: Columns, kind: str | None) -> str:
    """The format asked for, or the one detected from the rows' fields (a CoNLL file is not text)."""
    name = fmt if fmt != "auto" else detect_format(read.parsed, columns, kind)
    if fmt == "auto" and name == "text" and looks_like_conll(read.parsed):
        raise DataError(
            f"{read.path}: this looks like CoNLL token-tag data (one token and its tag per line, "
            "e.g. 'EU B-ORG'), not plain text",
            fix="set task: token_classify to train a tagger on it, or data.format: text to read each "
            "line as plain text anyway",
        )
    if fmt == "auto" and kind in ("chat", "preference") and name in (None, "prompt_completion"):
        _refuse_kto_rows(read, columns, kind)
    if name is None and kind == "labeled":
        name = "labeled"  # so the missing column is named below
    if name is None:
        raise DataError(
            f"{read.path}: cannot tell the data format from its fields ({_fields(read)})",
            fix=f"set data.format to one of {', '.join(FORMATS)} (and data.text_column / label_column)",
        )
    return name


def _refuse_kto_rows(read: ReadResult, columns: Columns, kind: str) -> None:
    """KTO rows (a true/false label) where sft or a pair objective reads the file: sft would learn the
    undesirable completions as well, and a pair objective finds no pairs. Both say what to set."""
    rows = read.parsed[:50]
    if detect_format(rows, columns) != "kto" or not any(
        isinstance(r.fields.get("label"), bool) for r in rows
    ):
        return
    reading = (
        "task sft would learn every completion, the undesirable ones too" if kind == "chat" else "no pairs"
    )
    raise DataError(
        f"{read.path}: these are KTO rows (prompt, completion, label: true/false): {reading}",
        fix="train them with task: preference and preference.objective: kto"
        + (
            ", or set data.format: prompt_completion to learn every completion anyway"
            if kind == "chat"
            else ""
        ),
    )


def _converted(read: ReadResult, name: str, columns: Columns) -> LoadedSplit:
    """Every row through the format's converter; each bad one kept as `file:where: reason`."""
    split = LoadedSplit(path=read.path, format=name, records=[], total_rows=read.total)
    convert = CONVERTERS[name]
    for row in read.rows:
        source = f"{read.path}:{row.where}"
        if row.error is not None:
            split.bad_rows.append(f"{source}: {row.error}")
            continue
        try:
            record = with_system_prompt(convert(row.fields, columns), columns.system_prompt)
        except RowError as exc:
            split.bad_rows.append(f"{source}: {exc}")
            continue
        # A file tunelab wrote (data/ or the cache) names each row's original file:line.
        split.records.append(_with_source(record, row.fields.get("_source") or source))
    return split


def _load_hub_split(
    spec_text: str,
    fmt: str,
    columns: Columns | None,
    on_error: str,
    text_unit: str,
    kind: str | None,
    hub_split: str,
) -> LoadedSplit:
    """A Hub dataset's split: its files downloaded and each read by our readers, then joined."""
    spec = hub.parse_spec(spec_text, default_split=hub_split)
    files = hub.split_files(hub.download(spec), spec.split)
    parts = [
        load_split(f, fmt=fmt, columns=columns, on_error="skip", text_unit=text_unit, kind=kind)
        for f in files
    ]
    merged = LoadedSplit(
        path=Path(spec_text),
        format=parts[0].format,
        records=[r for part in parts for r in part.records],
        bad_rows=[b for part in parts for b in part.bad_rows],
        total_rows=sum(part.total_rows for part in parts),
    )
    if merged.bad_rows and on_error == "fail":
        raise _bad_rows_error(merged)
    return merged


def _with_source(record: Record, source: str) -> Record:
    return replace(record, source=source)


def _fields(read: ReadResult) -> str:
    keys: set[str] = set()
    for row in read.parsed[:50]:
        keys.update(row.fields)
    return ", ".join(sorted(keys)) or "none"


def _check_columns(read: ReadResult, fmt: str, columns: Columns) -> None:
    """A configured column that no row has is a setting mistake, not a thousand bad rows."""
    if fmt not in ("labeled", "text"):
        return
    settings = {
        "text_column": columns.text,
        "label_column": columns.label,
        "text_pair_column": columns.text_pair,
    }
    if fmt == "text":
        settings = {"text_column": columns.text}
    keys: set[str] = set()
    for row in read.rows:
        keys.update(row.fields)
    for setting, column in settings.items():
        if column is not None and column not in keys:
            raise DataError(
                f"{read.path}: no column {column!r}; the file has: {', '.join(sorted(keys))}",
                fix=f"set data.{setting} to the right column name",
            )


def _bad_rows_error(split: LoadedSplit) -> DataError:
    shown = split.bad_rows[:MAX_LISTED]
    more = len(split.bad_rows) - len(shown)
    return DataError(
        f"{split.path}: {len(split.bad_rows)} bad row(s) out of {split.total_rows} ({split.format} format)",
        problems=shown + ([f"... and {more} more"] if more else []),
        fix="fix these rows, or set data.on_error: skip to leave them out (they are counted in the report)",
    )
