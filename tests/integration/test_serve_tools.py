"""Function calling through `tunelab serve`, driven by the official openai client: a fine-tuning job on an
OpenAI function-calling file, then chat completions with `tools=` that come back as parsed `tool_calls`,
streamed and not, for tool_choice auto, required, a named function and none, and a `role: "tool"`
follow-up answered in prose. A model whose template cannot express tools is refused with a 400."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serving import client, live_server, serve_config, upload, wait_for
from tests.tool_rows import LEARN_BY_HEART, ROWS, TOOLS, save_long_llama
from tests.tool_rows import call as _call

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_long_llama(tmp_path_factory.mktemp("long-llama"))


@pytest.fixture(scope="module")
def served(long_llama: Path, chat_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = serve_config(tmp_path_factory.mktemp("serve"), long_llama, job_defaults=LEARN_BY_HEART)
    config.models["chat"] = config.models["tiny"].model_copy(update={"path": str(chat_llama)})
    with live_server(config) as (url, key):
        api = client(url, key)
        training = upload(api, tmp_path_factory.mktemp("data") / "tools.jsonl", ROWS)
        job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id, seed=1)
        done = wait_for(api, job.id, timeout=600)
        assert done.status == "succeeded", done.error
        yield api, done.fine_tuned_model


def _ask(served: Any, question: str, **options: Any) -> Any:
    api, model = served
    messages = [{"role": "user", "content": question}]
    return api.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, max_tokens=80, temperature=0, **options
    )


def test_auto_returns_a_call_as_tool_calls_and_prose_as_content(served: Any) -> None:
    called = _ask(served, "Weather in Paris?").choices[0]
    assert called.finish_reason == "tool_calls" and called.message.content is None
    (call,) = called.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    prose = _ask(served, "Hello there!").choices[0]
    assert prose.finish_reason == "stop" and prose.message.content == "Good morning."
    assert prose.message.tool_calls is None


def test_a_streamed_call_arrives_as_tool_call_deltas(served: Any) -> None:
    chunks = list(_ask(served, "Weather in Rome?", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "Rome"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_required_and_a_named_function_always_call(served: Any) -> None:
    required = _ask(served, "Weather in Rome?", tool_choice="required").choices[0]
    (call,) = required.message.tool_calls
    assert required.finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Rome"}
    # A named function is forced even where the model would answer in prose: its name is fixed by the
    # forced start, its arguments are the model's own text (OpenAI too says they may not be valid JSON).
    named = {"type": "function", "function": {"name": "get_weather"}}
    forced = _ask(served, "Hello there!", tool_choice=named).choices[0]
    (call,) = forced.message.tool_calls
    assert forced.finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(call.function.arguments, str)


def test_none_answers_in_prose_and_a_tool_result_is_answered(served: Any) -> None:
    none = _ask(served, "Weather in Paris?", tool_choice="none").choices[0]
    assert none.message.tool_calls is None and none.finish_reason in ("stop", "length")
    api, model = served
    follow_up = api.chat.completions.create(
        model=model,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("call_3", "Oslo")]},
            {"role": "tool", "tool_call_id": "call_3", "content": "snow"},
        ],
        max_tokens=40,
        temperature=0,
    ).choices[0]
    assert follow_up.message.content == "It snows." and follow_up.message.tool_calls is None


def test_tools_for_a_model_whose_template_cannot_express_them_are_refused(served: Any) -> None:
    api, _ = served
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)
    assert "chat's chat template cannot express tools" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as unanswered:  # a call id no message made
        api.chat.completions.create(
            model="chat",
            messages=[
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "c", "content": "r"},
            ],
        )
    assert "answers call 'c', which no earlier message made" in str(unanswered.value)
