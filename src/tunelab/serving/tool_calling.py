"""Function calling on /v1/chat/completions, in OpenAI's shape: a request's `messages` (with assistant
`tool_calls` and `role: "tool"` results), `tools`, `tool_choice` and `parallel_tool_calls`; the answer's
calls parsed into `message.tool_calls` with `finish_reason: "tool_calls"`.

The model writes calls as the template it was trained with writes them; tunelab parses the Hermes/Qwen2.5
form (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, the built-in chatml_tools), so a model
whose template writes tools otherwise, or none at all, is refused a request with tools (400), never
answered with calls lost in its text. `tool_choice: "required"` and a named function are kept by a
forced prefix: the answer starts inside a <tool_call> block (with the function's name, when named), so a
call comes back. `"none"` renders the conversation without the tools.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from tunelab.data.chat_formats import chat_from_messages, tool_chat
from tunelab.data.fields import RowError
from tunelab.data.templates import message_dicts, tool_dicts, writes_hermes_calls
from tunelab.evaluation.tool_calls import CLOSE, OPEN, parse_tool_calls
from tunelab.serving.errors import APIError


@dataclass(frozen=True)
class ToolUse:
    """How one request uses tools: those the template writes into the prompt, the text the answer is forced
    to start with, and whether it may make several calls."""

    tools: list[dict[str, Any]]
    forced: str = ""
    parallel: bool = True


def conversation(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, parallel: bool | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The request's messages as the chat template reads them, and its tools; read and checked by the data
    stage's own reader (data/chat_formats.py), so a request is held to what training data is."""
    fields: dict[str, Any] = {"tools": tools} if tools else {}
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    try:
        chat = tool_chat(chat_from_messages(messages, needs_answer=False), fields)
    except RowError as exc:
        raise APIError(400, str(exc), param="messages") from None
    return message_dicts(chat.messages), tool_dicts(chat.tools)


def tool_use(
    tokenizer: Any, model: str, tools: list[dict[str, Any]] | None, choice: Any, parallel: bool | None
) -> ToolUse | None:
    """The request's tools and tool_choice as a ToolUse; None when the answer is prose (no tools, or
    tool_choice none)."""
    if not tools:
        if choice not in (None, "none", "auto"):
            raise APIError(
                400, "tool_choice needs tools: the functions the model may call", param="tool_choice"
            )
        return None
    if choice == "none":
        return None
    if not writes_hermes_calls(tokenizer):
        raise APIError(
            400,
            f"{model}'s chat template cannot express tools as tunelab reads them (<tool_call> blocks): fine-tune "
            "it on function-calling data (data.template auto or chatml_tools), or send the request without tools",
            param="tools",
            code="tools_not_supported",
        )
    return ToolUse(
        tools, _forced(choice, [tool["function"]["name"] for tool in tools]), parallel is not False
    )


def _forced(choice: Any, names: list[str]) -> str:
    if choice in (None, "auto"):
        return ""
    # Forced text ends where a token boundary is sure (not on a space, which byte-level BPEs join to the
    # next word), so the model continues with the tokens training taught it.
    if choice == "required":
        return f"{OPEN}\n"
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if choice is not None and not (isinstance(choice, dict) and choice.get("type") == "function" and name):
        raise APIError(
            400,
            'tool_choice: expected "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in names:
        raise APIError(
            400,
            f"tool_choice names {name!r}, which tools do not define ({', '.join(names)})",
            param="tool_choice",
        )
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments":'


def assistant_message(text: str, use: ToolUse | None) -> tuple[dict[str, Any], bool]:
    """The answer as OpenAI's assistant message, and whether it calls tools. Calls are parsed from the
    text (forced prefix included); text that is not a call stays content."""
    if use is None:
        return {"role": "assistant", "content": text, "refusal": None}, False
    parsed = parse_tool_calls(use.forced + text)
    objects = [_call_object(c.name, json.dumps(c.arguments, ensure_ascii=False)) for c in parsed.calls]
    if not objects and use.forced:  # a forced call the model wrote badly: still a call, as OpenAI's may be
        objects = _salvaged(use.forced + text)
    if not objects:
        return {"role": "assistant", "content": use.forced + text, "refusal": None}, False
    message = {"role": "assistant", "content": parsed.content or None, "refusal": None}
    return {**message, "tool_calls": objects[: None if use.parallel else 1]}, True


_NAME = re.compile(r'\{\s*"name"\s*:\s*"([^"]+)"\s*,\s*"arguments"\s*:')


def _salvaged(text: str) -> list[dict[str, Any]]:
    """A forced call whose block does not parse: the function it names and its arguments' raw text. OpenAI
    documents that a call's arguments may not be valid JSON; a client checks them, as it must there."""
    found = _NAME.search(text)
    if found is None:
        return []
    block = text[found.end() :].split(CLOSE, 1)[0].strip()
    arguments = block[:-1].rstrip() if block.endswith("}") and block.count("}") > block.count("{") else block
    return [_call_object(found.group(1), arguments)]


def _call_object(name: str, arguments: str) -> dict[str, Any]:
    function = {"name": name, "arguments": arguments}
    return {"id": "call_" + secrets.token_hex(12), "type": "function", "function": function}


def stream_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas OpenAI streams for a message that calls tools: per call, its id and name, then its
    arguments (the client joins the pieces by index)."""
    deltas: list[dict[str, Any]] = [{"content": message["content"]}] if message.get("content") else []
    for index, call in enumerate(message.get("tool_calls", [])):
        named = {"name": call["function"]["name"], "arguments": ""}
        deltas.append(
            {"tool_calls": [{"index": index, "id": call["id"], "type": "function", "function": named}]}
        )
        deltas.append(
            {"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}
        )
    return deltas
