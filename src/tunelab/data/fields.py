"""What every row converter shares: the error a bad row raises, and reading one text field.

Kept apart from formats.py so converter modules (pair_formats.py) and formats.py can both use them
without importing each other.
"""

from __future__ import annotations

from typing import Any


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
