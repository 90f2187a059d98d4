"""Read data files into canonical records, naming file, line and reason for every bad row.

A bad row is never dropped silently: the loaders collect every problem and raise one DataError that
lists the first `MAX_LISTED` of them and the total count.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.data.records import ROLES, Chat, Labeled, Message
from tunelab.errors import DataError

MAX_LISTED = 20
SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".tsv")

Row = tuple[int, dict[str, Any]]  # (1-based line number, the row's fields)


class RowProblems:
    """Collects `file:line: reason` lines and raises them together."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[str] = []

    def add(self, line: int, reason: str) -> None:
        self.items.append(f"{self.path}:{line}: {reason}")

    def raise_if_any(self, total_rows: int, fix: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_LISTED]
        more = len(self.items) - len(shown)
        problems = shown + ([f"... and {more} more"] if more else [])
        raise DataError(
            f"{self.path}: {len(self.items)} bad row(s) out of {total_rows}", problems=problems, fix=fix
        )


def read_rows(path: str | Path) -> tuple[list[Row], RowProblems]:
    """Read every row of a JSONL/CSV/TSV file; rows that cannot be parsed become problems."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file not found: {path.resolve()}", fix="check the path in the recipe's data section"
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}",
            fix=f"use one of {', '.join(SUPPORTED_SUFFIXES)} (more formats arrive with the data pipeline)",
        )
    problems = RowProblems(path)
    if suffix == ".jsonl":
        rows = list(_jsonl_rows(path, problems))
        if not rows and problems.items:
            raise DataError(
                f"{path}: no line of this file is a JSON object; is it really JSONL?",
                problems=problems.items[:3],
                fix='write one JSON object per line, e.g. {"text": "...", "label": "..."}',
            )
    else:
        rows = list(_delimited_rows(path, "\t" if suffix == ".tsv" else ","))
    return rows, problems


def _jsonl_rows(path: Path, problems: RowProblems) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(line_no, f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(value, dict):
                problems.add(line_no, f"expected a JSON object, got {type(value).__name__}")
                continue
            yield line_no, value


def _delimited_rows(path: Path, delimiter: str) -> Iterator[Row]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        # reader.line_num is the line a row *ends* on (a quoted field may span lines); +1 would skip the header.
        start = 2
        for row in reader:
            yield start, dict(row)
            start = reader.line_num + 1


# ---------------------------------------------------------------------------------------------
# Chat records (task: sft)


def load_chats(path: str | Path) -> list[Chat]:
    """`{"messages": [{"role", "content", "weight"?}, ...]}` per line, as OpenAI chat fine-tuning files."""
    rows, problems = read_rows(path)
    total_rows = len(rows) + len(problems.items)  # rows that parsed + rows that were not valid JSON
    chats: list[Chat] = []
    for line, row in rows:
        chat = _parse_chat(row, f"{path}:{line}", lambda reason, line=line: problems.add(line, reason))
        if chat is not None:
            chats.append(chat)
    problems.raise_if_any(
        total_rows,
        fix='each line needs {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}',
    )
    if not chats:
        raise DataError(f"{path}: the file has no rows", fix="point the recipe at a file with data in it")
    return chats


def _parse_chat(row: dict[str, Any], source: str, report: Any) -> Chat | None:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        report("missing 'messages' (a non-empty list of {role, content})")
        return None
    parsed: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            report(f"messages[{i}] is not an object")
            return None
        role, content, weight = message.get("role"), message.get("content"), message.get("weight")
        if role not in ROLES:
            report(f"messages[{i}]: unknown role {role!r}; expected one of {', '.join(ROLES)}")
            return None
        if not isinstance(content, str) or (role == "assistant" and not content.strip()):
            report(f"messages[{i}]: empty or missing content for role {role!r}")
            return None
        if weight not in (None, 0, 1):
            report(f"messages[{i}]: weight must be 0 or 1, got {weight!r}")
            return None
        parsed.append(Message(role=role, content=content, weight=weight))
    if not any(m.role == "assistant" for m in parsed):
        report("no assistant message: nothing to learn from this conversation")
        return None
    return Chat(messages=tuple(parsed), source=source)


# ---------------------------------------------------------------------------------------------
# Labelled records (task: classify)


def load_labeled(
    path: str | Path, *, text_column: str, label_column: str, text_pair_column: str | None = None
) -> list[Labeled]:
    rows, problems = read_rows(path)
    problems.raise_if_any(len(rows) + len(problems.items), fix="each line must be one JSON object")
    if not rows:
        raise DataError(f"{path}: the file has no rows", fix="point the recipe at a file with data in it")
    _check_columns_exist(
        path,
        rows,
        {"text_column": text_column, "label_column": label_column, "text_pair_column": text_pair_column},
    )
    records: list[Labeled] = []
    for line, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        pair = row.get(text_pair_column) if text_pair_column else None
        if not isinstance(text, str) or not text.strip():
            problems.add(line, f"empty or missing {text_column!r}")
        elif label is None or (isinstance(label, str) and not label.strip()):
            problems.add(line, f"empty or missing {label_column!r}")
        elif isinstance(label, (dict, list, float)):
            problems.add(line, f"{label_column!r} must be a string or an integer, got {label!r}")
        else:
            source = f"{path}:{line}"
            records.append(Labeled(text=text, label=str(label).strip(), text_pair=pair, source=source))
    problems.raise_if_any(len(rows), fix=f"give every row a non-empty {text_column!r} and {label_column!r}")
    return records


def _check_columns_exist(path: str | Path, rows: list[Row], columns: dict[str, str | None]) -> None:
    """`columns` maps the recipe setting (data.label_column) to the column name it asks for."""
    seen: set[str] = set()
    for _, row in rows:
        seen.update(row)
    for setting, column in columns.items():
        if column is not None and column not in seen:
            raise DataError(
                f"{path}: no column {column!r}; the file has: {', '.join(sorted(seen))}",
                fix=f"set data.{setting} to the right column name",
            )


# ---------------------------------------------------------------------------------------------
# Label maps


def build_label_map(records: list[Labeled]) -> dict[str, int]:
    """Label name -> id. Integer-like labels keep numeric order (0, 1, 2, ...), others sort by name."""
    names = {r.label for r in records}
    ordered = sorted(names, key=int) if all(_is_int(n) for n in names) else sorted(names)
    return {name: i for i, name in enumerate(ordered)}


def check_labels_known(records: list[Labeled], label_map: dict[str, int], split: str) -> None:
    unknown = [r for r in records if r.label not in label_map]
    if unknown:
        problems = [f"{r.source}: label {r.label!r} does not occur in the training data" for r in unknown]
        raise DataError(
            f"{split}: {len(unknown)} row(s) have labels the model cannot learn",
            problems=problems[:MAX_LISTED],
            fix=f"use only the training labels: {', '.join(label_map)}",
        )


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
