"""`tunelab chat` as a session: Ctrl-C stops the answer in progress, not the chat, and leaves the history
as it was before the question; lines that start with / are commands, never messages to the model.

The model is test_inference's tiny Llama overfit on two conversations, so greedy answers are the trained
ones. The interruption is injected where a real Ctrl-C lands, inside `generate` while it streams: in
process from the streamer's output callback, and in a real `tunelab chat` process by a SIGINT the process
sends itself as the first piece of an answer is shown (no timing involved either way).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, make_recipe, write_jsonl
from tests.integration.test_inference import (
    CONVERSATIONS,
    FIRST_PROMPT,
    HELLO,
    HELLO_ANSWER,
    HOW,
    HOW_ANSWER,
    SECOND_PROMPT,
)
from tunelab.chat import CHAT_HELP, STOPPED, chat_loop
from tunelab.config import load_recipe
from tunelab.models.restore import Trained, load_trained
from tunelab.runner import train

WHOLE_HISTORY = [
    {"role": "user", "content": HELLO},
    {"role": "assistant", "content": HELLO_ANSWER},
    {"role": "user", "content": HOW},
    {"role": "assistant", "content": HOW_ANSWER},
]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("chat-session")
    data = write_jsonl(root / "chats.jsonl", CONVERSATIONS)
    recipe = make_recipe(
        root, tiny_llama, "sft", method={"name": "full"}, data={"train": str(data), "validation": None},
        train={"max_steps": 40, "batch_size": 2, "grad_accum": 1, "lr": 1e-2, "scheduler": "constant",
               "eval_every": 1000, "save_every": 1000, "log_every": 10},
    )  # fmt: skip
    return train(load_recipe(recipe)).run_dir


def _typed(*lines: str) -> Any:
    pending = list(lines)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def _prompts_seen(trained: Trained) -> list[str]:
    """The prompts model.generate is called with, decoded, in call order (filled as the chat runs)."""
    seen: list[str] = []
    real = trained.model.generate

    def spy(**kwargs: Any) -> Any:
        seen.append(trained.tokenizer.decode(kwargs["input_ids"][0].tolist()))
        return real(**kwargs)

    trained.model.generate = spy
    return seen


def test_ctrl_c_during_an_answer_stops_that_answer_and_keeps_the_chat(chat_run: Path) -> None:
    trained = load_trained(chat_run)
    prompts = _prompts_seen(trained)
    shown: list[str] = []
    stopped_at: list[str] = []

    def show(text: str) -> None:
        shown.append(text)
        if len(prompts) == 2 and not stopped_at:  # the first piece of the second answer: Ctrl-C
            stopped_at.append(text)
            raise KeyboardInterrupt

    try:
        history = chat_loop(trained, _typed(HELLO, HOW, HOW, "/exit"), show, max_new_tokens=20)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during an answer ended the whole chat")

    # The interrupted question and its partial answer are left out; the history before it is intact, so
    # asking again renders exactly the prompt the interrupted turn had, and gets the trained answer.
    assert prompts == [FIRST_PROMPT, SECOND_PROMPT, SECOND_PROMPT]
    assert history == WHOLE_HISTORY
    (partial,) = stopped_at
    assert HOW_ANSWER.startswith(partial) and partial != HOW_ANSWER
    assert STOPPED == "[stopped; this question and its partial answer are not kept]"
    assert "".join(shown) == f"{HELLO_ANSWER}\n{partial}\n{STOPPED}\n{HOW_ANSWER}\n"


def test_slash_words_are_commands_and_never_reach_the_model(chat_run: Path) -> None:
    trained = load_trained(chat_run)
    prompts = _prompts_seen(trained)
    shown: list[str] = []
    lines = ["/help", "/nope", "/reset now", HELLO, "/reset", "//help", "/exit", "never read"]
    history = chat_loop(trained, _typed(*lines), shown.append, max_new_tokens=20)

    assert CHAT_HELP == (
        "commands:\n"
        "  /help   list these commands\n"
        "  /reset  forget the conversation so far\n"
        "  /exit   end the chat (so does Ctrl-D)\n"
        "Ctrl-C stops an answer and keeps the chat; start a message with // to send one that starts with /\n"
    )
    assert shown[:3] == [
        CHAT_HELP,
        f"unknown command '/nope'\n{CHAT_HELP}",
        f"/reset takes no argument\n{CHAT_HELP}",
    ]
    assert "".join(shown[3:]).startswith(f"{HELLO_ANSWER}\n(history cleared)\n")
    # Only the two messages were sent: HELLO, then (after /reset) the escaped "/help" as a first turn.
    escaped = "<|im_start|>user\n/help<|im_end|>\n<|im_start|>assistant\n"
    assert prompts == [FIRST_PROMPT, escaped]
    assert history[0] == {"role": "user", "content": "/help"} and len(history) == 2


DRIVER = textwrap.dedent(
    """
    import os
    import signal
    import sys

    import tunelab.cli.using as using
    from tunelab.cli import app

    # As in a terminal: SIGINT raises KeyboardInterrupt (a parent that ignores SIGINT would pass that on).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shown_lines = 0
    sent = False
    real_write = using.write_now


    def write_now(text):
        # Ctrl-C as the first piece of the second answer appears: a real SIGINT, sent to this process.
        global shown_lines, sent
        real_write(text)
        if text == "\\n":
            shown_lines += 1
        elif shown_lines == 1 and not sent:
            sent = True
            os.kill(os.getpid(), signal.SIGINT)


    using.write_now = write_now
    app(["chat", sys.argv[1], "--max-new-tokens", "20"], prog_name="tunelab")
    """
)


def test_tunelab_chat_survives_a_real_sigint_during_an_answer(chat_run: Path, tmp_path: Path) -> None:
    driver = tmp_path / "drive_chat.py"
    driver.write_text(DRIVER, encoding="utf-8")
    typed = "".join(f"{line}\n" for line in [HELLO, HOW, "/help", HOW, "/exit"])
    done = subprocess.run(
        [sys.executable, str(driver), str(chat_run)],
        input=typed,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    you = "you> "
    partial = done.stdout.split(you)[2].split("\n")[0]
    assert HOW_ANSWER.startswith(partial) and partial != HOW_ANSWER
    assert done.stdout == (
        f"{you}{HELLO_ANSWER}\n{you}{partial}\n{STOPPED}\n{you}{CHAT_HELP}{you}{HOW_ANSWER}\n{you}"
    )
    assert "interrupted" not in done.stderr


def test_ctrl_c_at_the_prompt_keeps_the_chat(chat_run: Path) -> None:
    trained = load_trained(chat_run)
    typed = _typed(HELLO, "/exit")
    pressed: list[bool] = []

    def read(prompt: str) -> str:
        if not pressed:  # Ctrl-C before the first question: a line cleared, not the chat ended
            pressed.append(True)
            raise KeyboardInterrupt
        return typed(prompt)

    shown: list[str] = []
    history = chat_loop(trained, read, shown.append, max_new_tokens=20)
    assert "".join(shown) == f"\n(/exit or Ctrl-D quits)\n{HELLO_ANSWER}\n"
    assert [m["role"] for m in history if m["role"] != "system"] == ["user", "assistant"]
