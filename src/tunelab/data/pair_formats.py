"""Converters of preference data: pairs (prompt/chosen/rejected, HH-RLHF dialogues, OpenAI's DPO rows),
KTO's unpaired rated rows, and an HH-RLHF transcript read as one conversation (for sft on the chosen
side of a pairs file). formats.py registers them in CONVERTERS."""

from __future__ import annotations

import re
from typing import Any

from tunelab.data.fields import Columns, RowError
from tunelab.data.fields import text_value as _content
from tunelab.data.records import ROLES, Chat, Message, Preference, Rated

HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_dialogue(text: str) -> list[Message]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> messages (HH-RLHF's whole-dialogue format)."""
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError("expected a dialogue of '\\n\\nHuman: ' / '\\n\\nAssistant: ' turns")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [Message(roles[speaker], body) for speaker, body in zip(parts[1::2], parts[2::2], strict=True)]


def from_hh_dialogue(fields: dict[str, Any], columns: Columns) -> Chat:
    """A transcript in the `dialogue` field as a conversation; `data.columns: {dialogue: chosen}` reads
    the chosen side of HH-RLHF pairs, so an sft stage can learn the answers a DPO stage then ranks."""
    text = _content(fields.get("dialogue"), "dialogue", required=True)
    turns = parse_hh_dialogue(text)
    if turns[-1].role != "assistant":
        raise RowError("dialogue: must end with an Assistant turn (the answer to learn)")
    for i, turn in enumerate(turns):  # as the chat format asks of every answer
        _content(turn.content, f"dialogue turn {i + 1} ({turn.role})", required=turn.role == "assistant")
    return Chat(tuple(turns))


def from_preference(fields: dict[str, Any], columns: Columns) -> Preference:
    chosen, rejected, prompt = fields.get("chosen"), fields.get("rejected"), fields.get("prompt")
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str):
        # HH-RLHF: both are whole dialogues; the shared prompt is everything before the final answer.
        chosen_turns, rejected_turns = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
        if chosen_turns[-1].role != "assistant" or rejected_turns[-1].role != "assistant":
            raise RowError("chosen and rejected must both end with an Assistant turn")
        if chosen_turns[:-1] != rejected_turns[:-1]:
            raise RowError("chosen and rejected differ before their final Assistant turn (no shared prompt)")
        prompt_messages = tuple(chosen_turns[:-1])
        chosen, rejected = chosen_turns[-1].content, rejected_turns[-1].content
    else:
        prompt_messages = preference_prompt(prompt)
        chosen, rejected = _final_answer(chosen, "chosen"), _final_answer(rejected, "rejected")
    chosen = _content(chosen, "chosen", required=True)
    rejected = _content(rejected, "rejected", required=True)
    if chosen == rejected:
        raise RowError("chosen and rejected are the same answer: nothing to prefer")
    return Preference(prompt=prompt_messages, chosen=chosen, rejected=rejected)


def from_openai_preference(fields: dict[str, Any], columns: Columns) -> Preference:
    """OpenAI's DPO rows: {input: {messages}, preferred_output: [message], non_preferred_output: [...]}."""
    given = fields.get("input")
    if not isinstance(given, dict) or not isinstance(given.get("messages"), list):
        raise RowError("input: expected {messages: [{role, content}, ...]}")
    pair = {"prompt": given["messages"], "chosen": fields.get("preferred_output")}
    return from_preference({**pair, "rejected": fields.get("non_preferred_output")}, columns)


def from_kto(fields: dict[str, Any], columns: Columns) -> Rated:
    """TRL's unpaired rows, {prompt, completion, label}: the prompt is text or messages, the completion
    text or a list of one assistant message, the label true (desirable) or false (undesirable)."""
    label, completion = fields.get("label"), fields.get("completion")
    # Only a JSON boolean: "false" as text, or 0/1, would be a guess at what the writer meant.
    if not isinstance(label, bool):
        raise RowError(f"label: expected true (desirable) or false (undesirable), got {label!r}")
    if isinstance(completion, list):
        (message,) = completion if len(completion) == 1 else (None,)
        if not isinstance(message, dict) or message.get("role") != "assistant":
            raise RowError("completion: expected text or a list of one {role: assistant, content} message")
        completion = message.get("content")
    text = _content(completion, "completion", required=True)
    return Rated(prompt=preference_prompt(fields.get("prompt")), completion=text, label=label)


def preference_prompt(prompt: Any) -> tuple[Message, ...]:
    """A `prompt` field: one user message as text, or a list of {role, content} messages."""
    if isinstance(prompt, str):
        return (Message("user", _content(prompt, "prompt", required=True)),)
    if isinstance(prompt, list) and prompt:
        return tuple(_prompt_message(m, i) for i, m in enumerate(prompt))
    raise RowError("prompt: missing (a string or a list of messages)")


def _prompt_message(message: Any, i: int) -> Message:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise RowError(f"prompt[{i}]: expected {{role, content}} with role one of {', '.join(ROLES)}")
    return Message(message["role"], _content(message.get("content"), f"prompt[{i}].content", required=True))


def _final_answer(value: Any, name: str) -> Any:
    """An answer given as a message list (UltraFeedback style) is its last assistant message."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return value[-1].get("content")
    return value
