"""Function calling in training data, as OpenAI's fine-tuning files carry it: a row's `tools` (legacy:
`functions`), an assistant's `tool_calls` (legacy: `function_call`), `role: "tool"` results answering a
call id (legacy: `role: "function"` with the function's `name`), and `parallel_tool_calls`. Read into the
canonical chat (records.ToolCall, Message.tool_calls, Chat.tools), then checked as a conversation: every
call names a function the row defines, with arguments that are a JSON object; every result answers a
call; no call is left unanswered when the conversation goes on. Each problem is a RowError the reader
names by file:line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tunelab.data.fields import RowError
from tunelab.data.records import Message, ToolCall


def read_tools(fields: dict[str, Any]) -> tuple[str, ...]:
    """The row's tools as canonical JSON texts, each {"type": "function", "function": {...}}; legacy
    `functions` (bare function schemas) read as the same. A JSON string of the list is read too (the
    ShareGPT/LLaMA-Factory files write `tools` so)."""
    if "tools" in fields and "functions" in fields:
        raise RowError("both 'tools' and the legacy 'functions': give one")
    raw = fields.get("tools", fields.get("functions"))
    where = "tools" if "tools" in fields else "functions"
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = _json(raw, where)
    if not isinstance(raw, list):
        raise RowError(f"{where}: expected a list of functions, got {type(raw).__name__}")
    return tuple(_tool(item, f"{where}[{i}]") for i, item in enumerate(raw))


def _tool(item: Any, where: str) -> str:
    if not isinstance(item, dict):
        raise RowError(f"{where}: expected an object")
    function = item.get("function", item) if item.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RowError(f"{where}: expected {{type: function, function: {{name, description, parameters}}}}")
    extra = set(item) - {"type", "function"} if "function" in item else set()
    if extra:
        raise RowError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; a tool has type and function")
    return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


def tool_names(tools: Sequence[str]) -> list[str]:
    return [json.loads(tool)["function"]["name"] for tool in tools]


def read_tool_calls(message: dict[str, Any], where: str) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls` (legacy `function_call`s were turned into these first:
    legacy_function_ids)."""
    calls = message.get("tool_calls")
    if calls is None:
        return ()
    if not isinstance(calls, list) or not calls:
        raise RowError(f"{where}.tool_calls: expected a non-empty list")
    return tuple(_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls))


def _tool_call(call: Any, where: str) -> ToolCall:
    if not isinstance(call, dict):
        raise RowError(f"{where}: expected {{id, type: function, function: {{name, arguments}}}}")
    extra = set(call) - {"id", "type", "function"}
    if extra:
        raise RowError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    if call.get("type", "function") != "function":
        raise RowError(f"{where}.type: only function calls are supported, got {call.get('type')!r}")
    call_id = call.get("id", "")
    if not isinstance(call_id, str):
        raise RowError(f"{where}.id: expected text")
    return _call(call.get("function"), f"{where}.function", call_id)


def _call(function: Any, where: str, call_id: str) -> ToolCall:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RowError(f"{where}: expected {{name, arguments}}")
    extra = set(function) - {"name", "arguments"}
    if extra:
        raise RowError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, dict):  # some datasets write the object itself, not its JSON text
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str) or not isinstance(_json(arguments, f"{where}.arguments"), dict):
        raise RowError(f"{where}.arguments: expected the JSON text of an object")
    return ToolCall(name=function["name"], arguments=arguments, id=call_id)


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"{where}: not valid JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from None


def check_tool_flow(messages: Sequence[Message], tools: Sequence[str], parallel: bool | None) -> None:
    """The conversation's calls and results agree: see the module's docstring."""
    defined = tool_names(tools)
    open_calls: dict[str, str] = {}  # id -> name, for calls not yet answered
    for i, message in enumerate(messages):
        if message.role == "assistant" and open_calls:
            unanswered = ", ".join(sorted(open_calls))
            raise RowError(
                f"messages[{i}]: call(s) {unanswered} have no tool result before this assistant turn"
            )
        if parallel is False and len(message.tool_calls) > 1:
            count = len(message.tool_calls)
            raise RowError(f"messages[{i}]: {count} calls, but the row sets parallel_tool_calls: false")
        for call in message.tool_calls:
            if call.name not in defined:
                known = ", ".join(defined) or "none: the row has no tools"
                raise RowError(
                    f"messages[{i}]: calls {call.name!r}, which the row's tools do not define ({known})"
                )
            if call.id in open_calls:
                raise RowError(f"messages[{i}]: two calls share the id {call.id!r}")
            open_calls[call.id] = call.name
        if message.role == "tool":
            if message.tool_call_id not in open_calls:
                answered = message.tool_call_id
                raise RowError(f"messages[{i}]: answers call {answered!r}, which no earlier message made")
            del open_calls[message.tool_call_id]


def legacy_function_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Legacy function calling (`function_call`, then `role: "function"` with the function's name) as tool
    calls with ids: each call gets `call_<n>`, and the function message after it answers that id."""
    out, last_id, n = [], None, 0
    for message in messages:
        if isinstance(message, dict) and "function_call" in message:
            call = message["function_call"]
            last_id, n = f"call_{n}", n + 1
            message = {k: v for k, v in message.items() if k != "function_call"}
            message["tool_calls"] = [{"id": last_id, "type": "function", "function": call}]
        elif isinstance(message, dict) and message.get("role") == "function":
            message = {**message, "role": "tool", "tool_call_id": last_id}
        out.append(message)
    return out
