"""`tunelab chat`: an interactive conversation with a trained model, answers streamed as they come.

The whole history is rendered with the training template every turn (inference.py's encoding), with
the functions the model may call when the chat has tools: an answer's <tool_call> blocks are kept in the
history as the assistant's calls, and `/result TEXT` answers the oldest call still waiting, as a `tool`
message, before the model goes on.

Streaming: `chat_loop` passes `model.generate` a streamer whose callback runs synchronously in
generate's own loop (`transformers.TextStreamer`), rather than `TextIteratorStreamer` plus a thread.
One thread keeps errors and Ctrl-C where the caller sees them, and decoding goes through the same
`generate` call as everything else (peft prompt methods, caches, sampling), unlike a hand-written loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TextStreamer

from tunelab.data.fields import RowError
from tunelab.data.templates import tool_dicts, writes_hermes_calls
from tunelab.data.tools import read_tools
from tunelab.errors import TunelabError
from tunelab.evaluation.tool_calls import parse_tool_calls
from tunelab.inference import (
    Messages,
    conversation,
    encode_messages,
    generate_ids,
    require_generative,
    require_tools,
)
from tunelab.models.restore import Trained

# Chat commands. A line whose first word is / and letters is a command, never a message to the model.
HELP, RESET, EXIT, RESULT = "/help", "/reset", "/exit", "/result"
_COMMAND_WORD = re.compile(r"/[A-Za-z]+")
STOPPED = "[stopped; this question and its partial answer are not kept]"
CHAT_HELP = (
    "commands:\n"
    "  /help   list these commands\n"
    "  /reset  forget the conversation so far\n"
    "  /exit   end the chat (so does Ctrl-D)\n"
    "Ctrl-C stops an answer and keeps the chat; start a message with // to send one that starts with /\n"
)
TOOLS_HELP = "  /result TEXT  the result of the oldest call still waiting for one (chats with --tools)\n"


def read_tools_file(path: Path) -> list[dict[str, Any]]:
    """`chat --tools FILE`: OpenAI's function definitions, a JSON list of them or an object holding one
    under "tools" (a request body, a training row), checked as training data's tools are."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TunelabError(f"{path}: cannot read tools: {exc}") from None
    try:
        tools = tool_dicts(read_tools(loaded if isinstance(loaded, dict) else {"tools": loaded}))
    except RowError as exc:
        raise TunelabError(f"{path}: {exc}") from None
    if not tools:
        raise TunelabError(
            f"{path}: no tools in it",
            fix='write a JSON list of {"type": "function", "function": {"name", "description", "parameters"}}',
        )
    return tools


class _CallbackStreamer(TextStreamer):
    """TextStreamer that hands each finished piece of text to a callback instead of printing it.

    TextStreamer decodes the whole answer so far at every token and releases text up to the last
    space or newline, so a word split over several tokens (or a multi-byte character) is never
    shown half-decoded.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.emit(text)


class _Session:
    """What every turn of one chat shares: the model, how it generates, where text goes, and its tools."""

    def __init__(
        self,
        trained: Trained,
        output_fn: Callable[[str], None],
        max_new_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None,
    ):
        self.trained, self.output_fn, self.tools = trained, output_fn, tools or None
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        # Calls are read back only from templates that write them as tunelab parses them.
        self.reads_calls = bool(self.tools) and writes_hermes_calls(trained.tokenizer)
        self.help = CHAT_HELP + (TOOLS_HELP if self.tools else "")


def chat_loop(
    trained: Trained,
    input_fn: Callable[[str], str],
    output_fn: Callable[[str], None],
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    prompt: str = "you> ",
    tools: list[dict[str, Any]] | None = None,
) -> Messages:
    """Read user turns with `input_fn` until /exit or end of input; stream each answer to `output_fn`.

    `/reset` forgets the history, `/help` lists the commands; any other /word is refused with that list.
    Ctrl-C while an answer streams stops that answer only: it and its question are dropped, so the
    history stays as it was before the question (as ollama drops an interrupted answer) and never holds
    two user turns in a row, which some templates refuse. Ctrl-C at the prompt clears the line and keeps
    the chat, as Python's prompt does: only /exit or Ctrl-D (end of input) end it. With `tools` (OpenAI's
    function definitions), `/result TEXT` answers a call. `output_fn` gets pieces of text (no newline
    added); returns the history at exit.
    """
    require_generative(trained)
    if tools:
        require_tools(trained)
    session = _Session(trained, output_fn, max_new_tokens, temperature, tools)
    system = system or trained.info.get("system_prompt")
    history: Messages = conversation(system, [])
    while True:
        try:
            line = input_fn(prompt).strip()
        except EOFError:
            break
        except KeyboardInterrupt:
            output_fn("\n(/exit or Ctrl-D quits)\n")
            continue
        command = _command(line, session)
        if command == EXIT:
            break
        if command == RESET:
            history = conversation(system, [])
            output_fn("(history cleared)\n")
        elif command == RESULT:
            history = _tool_result(session, history, line.split(maxsplit=1)[1])
        elif command is not None:
            output_fn(command)  # /help, or why the line is not a command, with the list
        elif line:
            text = line[1:] if line.startswith("//") else line  # "//help" sends "/help"
            history = _answer_turn(session, history, {"role": "user", "content": text})
    return history


def _command(line: str, session: _Session) -> str | None:
    """RESET, EXIT or RESULT; the text to show for /help or a refused /word; None for a message (or
    nothing)."""
    word, *rest = line.split(maxsplit=1) or [""]
    if not _COMMAND_WORD.fullmatch(word):
        return None
    if word == RESULT and session.tools:
        return RESULT if rest else f'{RESULT} needs the tool\'s output, e.g. /result {{"temp_c": 18}}\n'
    if word not in (HELP, RESET, EXIT):
        return f"unknown command {word!r}\n{session.help}"
    if rest:
        return f"{word} takes no argument\n{session.help}"
    return session.help if word == HELP else word


def _tool_result(session: _Session, history: Messages, text: str) -> Messages:
    """The history with `text` as the result of the oldest call waiting for one; once no call waits, the
    model answers."""
    waiting = _waiting_calls(history)
    if not waiting:
        session.output_fn("(no call is waiting for a result)\n")
        return history
    result = {"role": "tool", "tool_call_id": waiting[0], "content": text}
    if len(waiting) > 1:
        session.output_fn(f"(kept; {len(waiting) - 1} more call(s) wait for a result)\n")
        return [*history, result]
    return _answer_turn(session, history, result)


def _waiting_calls(history: Messages) -> list[str]:
    """Ids of the last assistant turn's calls that no tool message after it has answered, in order."""
    last = max((i for i, m in enumerate(history) if m["role"] == "assistant"), default=None)
    if last is None:
        return []
    answered = {m.get("tool_call_id") for m in history[last + 1 :] if m["role"] == "tool"}
    return [call["id"] for call in history[last].get("tool_calls", []) if call["id"] not in answered]


def _answer_turn(session: _Session, history: Messages, turn: dict[str, Any]) -> Messages:
    """The history with `turn` and its streamed answer; the history unchanged when Ctrl-C stopped it."""
    asked = [*history, turn]
    trained = session.trained
    try:
        answer = generate_ids(
            trained,
            encode_messages(trained, asked, session.tools),
            max_new_tokens=session.max_new_tokens,
            temperature=session.temperature,
            streamer=_CallbackStreamer(trained.tokenizer, session.output_fn),
        )
    except KeyboardInterrupt:
        # Raised inside generate (its streamer callback, a forward pass): generate_batch restored the
        # model's mode on the way out and each answer gets a fresh streamer, so nothing is left half-done.
        session.output_fn(f"\n{STOPPED}\n")
        return history
    session.output_fn("\n")
    return [*asked, _assistant(answer, session, len(asked))]


def _assistant(answer: str, session: _Session, turn: int) -> dict[str, Any]:
    """The answer as the history keeps it: with tools, its <tool_call> blocks as the assistant's calls,
    each given an id for /result to answer. An answer with a block that does not parse stays text, whole."""
    parsed = parse_tool_calls(answer) if session.reads_calls else None
    if parsed is not None and parsed.errors:
        session.output_fn(f"({'; '.join(parsed.errors)}: the answer is kept as text)\n")
    if parsed is None or parsed.errors or not parsed.calls:
        return {"role": "assistant", "content": answer}
    calls = [
        {"id": f"call_{turn}_{k}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for k, c in enumerate(parsed.calls)
    ]
    session.output_fn("".join(f"(call {c['id']}: {_call_line(c)})\n" for c in calls))
    return {"role": "assistant", "content": parsed.content, "tool_calls": calls}


def _call_line(call: dict[str, Any]) -> str:
    function = call["function"]
    return f"{function['name']}({json.dumps(function['arguments'], ensure_ascii=False)})"
