"""Chat templates: render a conversation and find the character spans of its assistant turns.

We locate assistant turns by rendering prefixes of the conversation, not by searching for the
answer text, so the approach works with any template that renders prefix-consistently (the
conversation up to turn i is a prefix of the whole). TRL's `assistant_only_loss` instead needs the
template to carry `{% generation %}` markers, which most shipped templates lack.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.records import Chat, Message
from tunelab.errors import DataError

# ChatML, used when the tokenizer ships no template of its own.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


LLAMA3 = (
    "{{ bos_token or '' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Alpaca's prompt layout; a system message, if any, is the preamble.
ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Response:\n' + message['content'] + (eos_token or '') + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

# ChatML with function calling, as Hermes and Qwen2.5 write it: the tools as JSON in the system turn, each
# call as <tool_call>{"name": ..., "arguments": {...}}</tool_call> in the assistant's turn (after its
# text), and tool results as <tool_response> blocks in a user turn (consecutive results share one).
# Used for data with tools when the tokenizer's own template cannot render them.
CHATML_TOOLS = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- if tools %}"
    "{{ '<|im_start|>system\n' + (system + '\n\n' if system else '') + '# Tools\n\nYou may call one or more "
    "functions to assist with the user query.\n\nYou are provided with function signatures within <tools>"
    "</tools> XML tags:\n<tools>' }}"
    "{%- for tool in tools %}{{ '\n' + tool | tojson }}{%- endfor %}"
    "{{ '\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n' }}"
    "{%- elif system %}{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant' }}{%- if message['content'] %}{{ '\n' + message['content'] }}{%- endif %}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' + call['arguments'] | tojson"
    " + '}\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\n<tool_response>\n' + message['content'] + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)

BUILTIN_TEMPLATES = {"chatml": CHATML, "chatml_tools": CHATML_TOOLS, "llama3": LLAMA3, "alpaca": ALPACA}
# The markers each built-in template writes around turns; generation stops on the end-of-turn one, so
# each must be one token of the tokenizer (alpaca's turns end with the tokenizer's own EOS token).
TEMPLATE_MARKERS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "chatml_tools": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "alpaca": (),
}


def split_markers(tokenizer: Any, template: str) -> list[str]:
    """The template's markers that the tokenizer cuts into several pieces (it has no token for them)."""
    return [
        marker
        for marker in TEMPLATE_MARKERS.get(template, ())
        if len(tokenizer(marker, add_special_tokens=False)["input_ids"]) != 1
    ]


def add_marker_tokens(tokenizer: Any, template: str) -> list[str]:
    """Add the template's markers that the tokenizer lacks as special tokens; return those added.

    Deterministic (same tokenizer and template, same ids), so a data-cache hit re-adds exactly the ids
    the cached tokens were encoded with. The model's embeddings must then grow to match (load.py).
    """
    missing = split_markers(tokenizer, template)
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return missing


@dataclass(frozen=True)
class Span:
    start: int  # character offsets into the rendered text, end exclusive
    end: int


def ensure_chat_template(tokenizer: Any, name: str = "auto", *, tools: bool = False) -> str:
    """Set the template to render with; return its name (a file's path for a Jinja file). It is saved
    with the tokenizer in final/, so inference renders prompts exactly as training did. With `tools`
    (the data calls functions), auto keeps the tokenizer's own template only if it renders tools, else
    takes chatml_tools; a named template that cannot render them is refused."""
    if name == "auto":
        if getattr(tokenizer, "chat_template", None) and (not tools or supports_tools(tokenizer)):
            return "tokenizer"
        name = "chatml_tools" if tools else "chatml"
    if name in BUILTIN_TEMPLATES:
        tokenizer.chat_template = BUILTIN_TEMPLATES[name]
    else:  # a Jinja file (the recipe check parsed it)
        tokenizer.chat_template = Path(name).expanduser().read_text(encoding="utf-8")
    if tools and not supports_tools(tokenizer):
        raise DataError(
            f"the data calls functions (tools), and the {name} chat template cannot render them",
            fix="set data.template: auto (the tokenizer's own template where it renders tools, else "
            "chatml_tools) or chatml_tools",
        )
    return name


def _call_dict(name: str, arguments: str, call_id: str = "") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.loads(arguments)}}


# A function and a call to it, rendered to find out whether a template writes tools at all: one that
# ignores them would train on answers whose calls are missing.
_PROBE_TOOL = {
    "type": "function",
    "function": {"name": "tunelab_probe_fn", "description": "probe", "parameters": {"type": "object"}},
}
_PROBE_CALL = [
    {"role": "user", "content": "probe"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call_dict("tunelab_probe_fn", '{"probe": "tunelab_arg"}')],
    },
]


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template writes a row's tools and an assistant's calls."""
    try:
        text = str(tokenizer.apply_chat_template(_PROBE_CALL, tools=[_PROBE_TOOL], tokenize=False))
    except Exception:  # a template that chokes on tools or calls cannot render them
        return False
    return text.count("tunelab_probe_fn") >= 2 and "tunelab_arg" in text  # in the list and in the call


# How chatml_tools (Hermes, Qwen2.5) writes the probe's call: a template that writes calls so is one whose
# answers evaluation/tool_calls.py parses, and whose calls a server can force to start (tool_choice).
HERMES_PROBE_CALL = (
    '<tool_call>\n{"name": "tunelab_probe_fn", "arguments": {"probe": "tunelab_arg"}}\n</tool_call>'
)


def writes_hermes_calls(tokenizer: Any) -> bool:
    """Whether the tokenizer's template writes calls as <tool_call>{"name": ..., "arguments": ...} blocks."""
    try:
        text = str(tokenizer.apply_chat_template(_PROBE_CALL, tools=[_PROBE_TOOL], tokenize=False))
    except Exception:
        return False
    return HERMES_PROBE_CALL in text


def message_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as chat templates read them (transformers' convention): each call's arguments an object."""
    return [_message_dict(m) for m in messages]


def _message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [_call_dict(c.name, c.arguments, c.id) for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def tool_dicts(tools: Sequence[str]) -> list[dict[str, Any]] | None:
    """A chat's tools as templates read them; None when it has none (templates test `if tools`)."""
    return [json.loads(tool) for tool in tools] or None


def render_chat(tokenizer: Any, chat: Chat) -> tuple[str, list[Span]]:
    """The conversation as text, and the spans (answer plus end-of-turn marker) that carry the loss: an
    assistant turn's text and its calls alike; tool results are the prompt, never a target."""
    messages, tools = message_dicts(chat.messages), tool_dicts(chat.tools)
    full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans: list[Span] = []
    for i, message in enumerate(chat.messages):
        if message.role != "assistant" or message.weight == 0:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools)
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"{chat.source}: the chat template does not render this conversation prefix-consistently, "
                "so the assistant turns cannot be located for the loss mask",
                fix="use a template without history rewriting (the built-in chatml, for one)",
            )
        # Whitespace after the end-of-turn marker is the template's layout, not something to learn.
        end = len(through.rstrip())
        if end > len(before):  # a template that drops assistant turns yields no span; pre-flight reports it
            spans.append(Span(len(before), end))
    return full, spans


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    tools: list[dict[str, Any]] | None,
) -> str:
    options = {"tools": tools} if tools else {}  # a template without tools support may reject the keyword
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **options
    )
    return str(text)


def user_spans(text: str, chat: Chat) -> list[Span]:
    """The character spans of the user turns' contents in the rendered text, in turn order.

    Found by searching each message's content in order (a template may trim or rewrite a message, in
    which case that turn has no span and is never cut). Only `truncation_side: prompt` uses this, to
    know which tokens it may remove; the loss mask never depends on it.
    """
    spans: list[Span] = []
    cursor = 0
    for message in chat.messages:
        content = message.content.strip()
        at = text.find(content, cursor) if content else -1
        if at < 0:
            continue
        cursor = at + len(content)
        if message.role == "user":
            spans.append(Span(at, cursor))
    return spans
