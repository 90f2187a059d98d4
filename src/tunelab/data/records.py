"""Canonical records: every input format is converted once, at load time, into one of these.

Everything downstream of loading knows only these records, never the source format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """A function the assistant calls (OpenAI's `tool_calls[i]`): its name, and its arguments as the JSON
    text of an object, as OpenAI's wire format carries them."""

    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True)
class Message:
    role: str
    content: str  # "" for an assistant message that only calls tools (OpenAI's content: null)
    # 0 excludes an assistant turn from the loss (OpenAI fine-tuning's per-message weight); None means 1.
    weight: int | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # assistant: the functions it calls
    tool_call_id: str | None = None  # tool: the call this result answers
    name: str | None = None  # the speaker's name (OpenAI's `name`), or a tool result's function


@dataclass(frozen=True)
class Chat:
    messages: tuple[Message, ...]
    source: str = field(default="", compare=False)  # "file:line", for error messages
    # The functions the assistant may call, each the JSON text of OpenAI's {"type": "function",
    # "function": {name, description, parameters}}; parallel_tool_calls as the row set it.
    tools: tuple[str, ...] = ()
    parallel_tool_calls: bool | None = None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) or any(m.tool_calls or m.role == "tool" for m in self.messages)


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
    if isinstance(record, Chat):  # a call's name and arguments are text the data gates must see
        return "\n".join(part for m in record.messages for part in (m.content, *map(call_text, m.tool_calls)))
    if isinstance(record, Labeled):
        return record.text if record.text_pair is None else f"{record.text}\n{record.text_pair}"
    if isinstance(record, Preference):
        return "\n".join([*(m.content for m in record.prompt), record.chosen, record.rejected])
    if isinstance(record, Rated):  # the label is not text: two rows differing only in it are duplicates
        return "\n".join([*(m.content for m in record.prompt), record.completion])
    if isinstance(record, Tagged):
        return " ".join(record.tokens)
    return record.text


def call_text(call: ToolCall) -> str:
    return f"{call.name}({call.arguments})"
