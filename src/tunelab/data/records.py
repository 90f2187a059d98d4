"""Canonical records: every input format is converted once, at load time, into one of these.

Everything downstream of loading knows only these records, never the source format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    # 0 excludes an assistant turn from the loss (OpenAI fine-tuning's per-message weight); None means 1.
    weight: int | None = None


@dataclass(frozen=True)
class Chat:
    messages: tuple[Message, ...]
    source: str = field(default="", compare=False)  # "file:line", for error messages


@dataclass(frozen=True)
class Text:
    text: str
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Labeled:
    text: str
    label: str
    text_pair: str | None = None
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Preference:
    prompt: tuple[Message, ...]  # the shared conversation before the two answers
    chosen: str
    rejected: str
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Rated:
    """One answer judged on its own (KTO's unpaired rows): desirable (label True) or undesirable."""

    prompt: tuple[Message, ...]  # the conversation before the answer
    completion: str
    label: bool
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Tagged:
    """A sentence as words, each with its tag (token classification: B-PER, I-PER, O, ...)."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    source: str = field(default="", compare=False)


Record = Chat | Text | Labeled | Preference | Rated | Tagged


def record_text(record: Record) -> str:
    """All of a record's text in one string: what dedup, leakage and PII checks look at."""
    if isinstance(record, Chat):
        return "\n".join(m.content for m in record.messages)
    if isinstance(record, Labeled):
        return record.text if record.text_pair is None else f"{record.text}\n{record.text_pair}"
    if isinstance(record, Preference):
        return "\n".join([*(m.content for m in record.prompt), record.chosen, record.rejected])
    if isinstance(record, Rated):  # the label is not text: two rows differing only in it are duplicates
        return "\n".join([*(m.content for m in record.prompt), record.completion])
    if isinstance(record, Tagged):
        return " ".join(record.tokens)
    return record.text
