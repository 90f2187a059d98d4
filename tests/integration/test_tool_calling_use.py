"""A model trained to call functions, used through `predict` and `chat`: each renders a row's (or the
chat's) tools as training did, and reads the calls back out of the answer; `/result` answers a call in
chat. A model whose template cannot render tools is refused them rather than answering blind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe, only_run_dir, write_jsonl
from tests.tool_rows import LEARN_BY_HEART, ROWS, TOOLS, call, save_long_llama
from tunelab.chat import chat_loop
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.inference import predict_file
from tunelab.models.restore import Trained, load_trained
from tunelab.runner import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny Llama that learned ROWS by heart: it calls get_weather for a city and answers the rest."""
    folder = tmp_path_factory.mktemp("caller")
    model = save_long_llama(folder / "base")
    recipe = make_recipe(folder, model, "sft", **LEARN_BY_HEART)
    write_jsonl(folder / "train.jsonl", ROWS)
    recipe_data = load_recipe(recipe)
    recipe_data.data.validation = None
    train(recipe_data)
    return load_trained(only_run_dir(folder))


def _typed(*lines: str) -> Any:
    pending: Iterator[str] = iter(lines)

    def read(prompt: str) -> str:
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    return read


def test_predict_renders_each_rows_tools_and_parses_its_calls(caller: Trained, tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS},
        {"messages": [{"role": "user", "content": "Hello there!"}], "tools": TOOLS},
        {  # a conversation that ends with the tool's result: the answer uses it
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": None, "tool_calls": [call("call_3", "Oslo")]},
                {"role": "tool", "tool_call_id": "call_3", "content": "snow"},
            ],
            "tools": TOOLS,
        },
    ]
    out = tmp_path / "predictions.jsonl"
    predict_file(caller, write_jsonl(tmp_path / "ask.jsonl", rows), out, max_new_tokens=100)
    paris, hello, oslo = [json.loads(line) for line in out.read_text().splitlines()]
    assert paris["pred_tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert paris["pred_tool_calls_unparsed"] == 0 and paris["tools"] == TOOLS  # the row's columns kept
    assert hello["pred_answer"] == "Good morning." and hello["pred_tool_calls"] == []
    assert oslo["pred_answer"] == "It snows." and oslo["pred_tool_calls"] == []


def test_a_predict_row_whose_calls_do_not_fit_its_tools_is_named(caller: Trained, tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_3", "Oslo")]},
            {"role": "tool", "tool_call_id": "call_9", "content": "snow"},
        ],
        "tools": TOOLS,
    }
    ask = write_jsonl(tmp_path / "ask.jsonl", [row])
    with pytest.raises(TunelabError) as refused:
        predict_file(caller, ask, tmp_path / "out.jsonl")
    assert f"{ask}:1: messages[2]: answers call 'call_9', which no earlier message made" in str(
        refused.value.problems
    )
    assert not (tmp_path / "out.jsonl").exists()


def test_chat_keeps_the_calls_and_result_answers_them(caller: Trained) -> None:
    shown: list[str] = []
    lines = ("Weather in Oslo?", "/result snow", "/result again", "/help")
    history = chat_loop(caller, _typed(*lines), shown.append, max_new_tokens=100, tools=TOOLS)
    asked, called, result, answered = history
    assert asked == {"role": "user", "content": "Weather in Oslo?"}
    assert called["tool_calls"] == [
        {
            "id": "call_1_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
        }
    ]
    assert result == {"role": "tool", "tool_call_id": "call_1_0", "content": "snow"}
    assert answered == {"role": "assistant", "content": "It snows."}
    text = "".join(shown)
    assert '(call call_1_0: get_weather({"city": "Oslo"}))' in text
    assert "(no call is waiting for a result)" in text and "/result TEXT" in text


def test_tools_are_refused_to_a_model_whose_template_cannot_render_them(
    chat_llama: Path, tmp_path: Path
) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS), encoding="utf-8")
    result = CliRunner().invoke(app, ["chat", str(chat_llama), "--tools", str(tools_file)], input="/exit\n")
    assert result.exit_code == 1, result.output
    assert "its chat template cannot render tools" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"type": "function", "function": {"description": "no name"}}]))
    refused = CliRunner().invoke(app, ["chat", str(chat_llama), "--tools", str(bad)], input="/exit\n")
    assert refused.exit_code == 1 and f"{bad}: tools[0]" in refused.output
