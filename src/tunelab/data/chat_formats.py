"""The chat formats: OpenAI's chat rows (`messages`, with function calling: data/tools.py) and ShareGPT's
`conversations` (with LLaMA-Factory's function_call and observation turns), as canonical chats."""

from __future__ import annotations

import json
from typing import Any

from tunelab.data.fields import Columns, RowError
from tunelab.data.fields import text_value as _content
from tunelab.data.records import ROLES, Chat, Message
from tunelab.data.tools import check_tool_flow, legacy_function_ids, read_tool_calls, read_tools

MESSAGE_KEYS = ("role", "content", "weight", "name", "tool_calls", "tool_call_id")


def chat_from_messages(
    messages: Any, system: Any = None, *, needs_answer: bool = True
) -> tuple[Message, ...]:
    """Messages as records; `needs_answer=False` reads a prompt to answer (predict), with no assistant turn
    required. Legacy function calling is read as tool calls (data/tools.py)."""
    if not isinstance(messages, list) or not messages:
        raise RowError("missing 'messages' (a non-empty list of {role, content})")
    parsed = [Message("system", _content(system, "system", required=True))] if system else []
    parsed += [_message(message, i) for i, message in enumerate(legacy_function_ids(messages))]
    if needs_answer and not any(m.role == "assistant" for m in parsed):
        raise RowError("no assistant message: nothing to learn from this conversation")
    return tuple(parsed)


def _message(message: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise RowError(f"{where} is not an object")
    unknown = sorted(set(message) - set(MESSAGE_KEYS))
    if unknown:  # read by no format: refused, not dropped
        raise RowError(
            f"{where}: unknown key(s) {', '.join(unknown)}; a message has {', '.join(MESSAGE_KEYS)}"
        )
    role, weight = message.get("role"), message.get("weight")
    if role not in ROLES:
        raise RowError(f"{where}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if "tool_calls" in message and role != "assistant":
        raise RowError(f"{where}: tool_calls belong to an assistant message, not a {role} one")
    calls = read_tool_calls(message, where)
    if "content" not in message and not calls:
        raise RowError(f"{where}: missing content")
    if message.get("content") is None and calls:
        content = ""  # OpenAI's content: null beside the calls
    else:
        content = _content(
            message.get("content"), f"{where}.content", required=role == "assistant" and not calls
        )
    if weight not in (None, 0, 1):
        raise RowError(f"{where}: weight must be 0 or 1, got {weight!r}")
    call_id = message.get("tool_call_id")
    if role == "tool" and not isinstance(call_id, str):
        raise RowError(f"{where}: a tool message needs tool_call_id, the id of the call it answers")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise RowError(f"{where}.name: expected text")
    return Message(role, content, weight, tool_calls=calls, tool_call_id=call_id, name=name)


def from_chat(fields: dict[str, Any], columns: Columns) -> Chat:
    return tool_chat(chat_from_messages(fields.get("messages"), fields.get("system")), fields)


def tool_chat(messages: tuple[Message, ...], fields: dict[str, Any]) -> Chat:
    """A chat with the row's tools, its calls and results checked against them (data/tools.py)."""
    tools = read_tools(fields)
    parallel = fields.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise RowError(f"parallel_tool_calls: expected true or false, got {parallel!r}")
    check_tool_flow(messages, tools, parallel)
    return Chat(messages, tools=tools, parallel_tool_calls=parallel)


SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


def from_sharegpt(fields: dict[str, Any], columns: Columns) -> Chat:
    return tool_chat(chat_from_messages(sharegpt_messages(fields), fields.get("system")), fields)


def sharegpt_messages(fields: dict[str, Any]) -> list[dict[str, Any]]:
    """ShareGPT's {from, value} turns as {role, content} messages; LLaMA-Factory's `function_call` turn
    (the JSON of one call or a list of them) and `observation` turn (its result) as a tool call and the
    tool message answering it."""
    turns = fields.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("missing 'conversations' (a non-empty list of {from, value})")
    messages: list[dict[str, Any]] = []
    calls: list[str] = []  # ids of the last function_call turn's calls, for the observations after it
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"conversations[{i}] is not an object")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker == "function_call":
            messages.append(sharegpt_call(value, f"conversations[{i}]", len(messages)))
            calls = [call["id"] for call in messages[-1]["tool_calls"]]
        elif speaker in ("observation", "tool"):
            answered = calls.pop(0) if calls else None
            messages.append({"role": "tool", "content": value, "tool_call_id": answered})
        elif speaker in SHAREGPT_ROLES:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
        else:
            raise RowError(
                f"conversations[{i}]: unknown speaker {speaker!r}; expected human, gpt, system, function_call "
                "or observation"
            )
    return messages


def sharegpt_call(value: Any, where: str, n: int) -> dict[str, Any]:
    """A `function_call` turn's value, the JSON of {name, arguments} or a list of them, as an assistant
    message with tool_calls (ids made up from the turn's position: the format has none)."""
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise RowError(f"{where}: the function call is not valid JSON ({exc.msg})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    tool_calls = [
        {"id": f"call_{n}_{k}", "type": "function", "function": call} for k, call in enumerate(calls)
    ]
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}
