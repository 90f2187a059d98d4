"""Chat templates: render a conversation and find the character spans of its assistant turns.

We locate assistant turns by rendering prefixes of the conversation, not by searching for the
answer text, so the approach works with any template that renders prefix-consistently (the
conversation up to turn i is a prefix of the whole). TRL's `assistant_only_loss` instead needs the
template to carry `{% generation %}` markers, which most shipped templates lack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.records import Chat
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

BUILTIN_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA}
# The markers each built-in template writes around turns; generation stops on the end-of-turn one, so
# each must be one token of the tokenizer (alpaca's turns end with the tokenizer's own EOS token).
TEMPLATE_MARKERS = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
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


def ensure_chat_template(tokenizer: Any, name: str = "auto") -> str:
    """Set the template to render with; return its name (a file's path for a Jinja file). It is saved
    with the tokenizer in final/, so inference renders prompts exactly as training did."""
    if name == "auto":
        if getattr(tokenizer, "chat_template", None):
            return "tokenizer"
        name = "chatml"
    if name in BUILTIN_TEMPLATES:
        tokenizer.chat_template = BUILTIN_TEMPLATES[name]
    else:  # a Jinja file (the recipe check parsed it)
        tokenizer.chat_template = Path(name).expanduser().read_text(encoding="utf-8")
    return name


def render_chat(tokenizer: Any, chat: Chat) -> tuple[str, list[Span]]:
    """The conversation as text, and the spans (answer plus end-of-turn marker) that carry the loss."""
    messages = [{"role": m.role, "content": m.content} for m in chat.messages]
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[Span] = []
    for i, message in enumerate(chat.messages):
        if message.role != "assistant" or message.weight == 0:
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
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


def _render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
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
