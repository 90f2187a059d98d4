"""What every row converter shares: the column mapping it reads a row through (Columns), the error a
bad row raises, and reading one text field.

Kept apart from formats.py so converter modules (pair_formats.py) and formats.py can both use them
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Columns:
    """How a converter reads a row: the recipe's data.text_column, label_column, text_pair_column,
    columns (renames), prompt_template and system_prompt (pipeline.columns_of)."""

    text: str = "text"
    label: str = "label"
    text_pair: str | None = None
    rename: dict[str, str] = field(default_factory=dict)  # format field -> source column: prompt -> dialogue
    prompt_template: str | None = None  # the user message, from the row's fields: "Summarize:\n{dialogue}"
    system_prompt: str | None = None  # given to every conversation without a system message

    def apply(self, fields: dict[str, Any]) -> dict[str, Any]:
        if not self.rename:
            return fields
        return {**fields, **{name: fields[src] for name, src in self.rename.items() if src in fields}}


class RowError(Exception):
    """One row cannot become a record; the message is the reason shown to the user."""


def text_value(value: Any, where: str, *, required: bool) -> str:
    """`value` as text; missing, not text, or (when required) blank is a RowError naming `where`."""
    if value is None:
        raise RowError(f"{where}: missing")
    if not isinstance(value, str):
        raise RowError(f"{where}: expected text, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"{where}: empty")
    return value
