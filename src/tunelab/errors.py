"""User-facing errors.

Every problem a user can fix (a bad recipe, a missing file, a malformed row) is raised as a
`TunelabError`: a short message naming the problem and, where we know it, the fix. The CLI prints
these without a traceback; anything else is a bug in tunelab and is reported as such.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A problem the user can fix. `problems` holds one line per problem when there are several."""

    def __init__(self, message: str, *, fix: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [self.message, *(f"  {p}" for p in self.problems)]
        if self.fix:
            lines.append(f"fix: {self.fix}")
        return "\n".join(lines)


class RecipeError(TunelabError):
    """The recipe does not validate; `problems` lists every one, each prefixed by its YAML path."""


class DataError(TunelabError):
    """A data file is missing, unreadable or has bad rows (each named as file:line: reason)."""


class ModelLoadError(TunelabError):
    """The model could not be found or loaded; the message names every place that was tried."""
