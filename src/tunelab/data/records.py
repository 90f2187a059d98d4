"""Canonical records: every input format is converted once, at load time, into one of these.

Everything downstream of loading knows only these records, never the source format.
(`Text` and `Preference` arrive with the pretrain and preference tasks.)
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
class Labeled:
    text: str
    label: str
    text_pair: str | None = None
    source: str = field(default="", compare=False)
