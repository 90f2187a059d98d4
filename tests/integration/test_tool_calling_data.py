"""Function-calling data (issue 29): every supported tool format reaches the canonical chat and comes back
out of `data prepare` with nothing lost; bad tool rows are named by file:line; rendering goes through the
tokenizer's own template when it writes tools, else the pinned built-in chatml_tools; and the loss covers
the assistant's calls, never the tool results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer
from typer.testing import CliRunner

from tests.conftest import make_recipe, write_jsonl
from tests.tool_rows import call as _call
from tunelab.cli import app
from tunelab.data.formats import load_split
from tunelab.data.records import Chat
from tunelab.data.screen import row_texts
from tunelab.data.templates import (
    ensure_chat_template,
    message_dicts,
    render_chat,
    supports_tools,
    tool_dicts,
)
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy, tokenize_chats
from tunelab.errors import DataError

runner = CliRunner()
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]


OPENAI = {
    "messages": [
        {"role": "system", "content": "You help with travel."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call("call_1", "Paris"), _call("call_2", "Rome")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"celsius": 25}'},
        {"role": "assistant", "content": "Paris 21C, Rome 25C.", "weight": 1},
    ],
    "tools": TOOLS,
    "parallel_tool_calls": True,
}
TEXT_AND_CALL = {
    "messages": [
        {"role": "user", "content": "Is it raining in Oslo?", "name": "ana"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [_call("c9", "Oslo")]},
    ],
    "tools": TOOLS,
}
LEGACY = {
    "messages": [
        {"role": "user", "content": "Weather in Lima?"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Lima"}'},
        },
        {"role": "function", "name": "get_weather", "content": "rain"},
        {"role": "assistant", "content": "Rain in Lima."},
    ],
    "functions": [WEATHER],
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "Weather in Kyiv?"},
        {
            "from": "function_call",
            "value": json.dumps({"name": "get_weather", "arguments": {"city": "Kyiv"}}),
        },
        {"from": "observation", "value": "snow"},
        {"from": "gpt", "value": "Snow in Kyiv."},
    ],
    "tools": json.dumps([WEATHER]),
}
# Each as the canonical chat writes it (data prepare's files): OpenAI's modern form, whatever came in.
CANONICAL = {
    "openai": OPENAI,
    "text and call": TEXT_AND_CALL,
    "legacy functions": {
        "messages": [
            {"role": "user", "content": "Weather in Lima?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("call_0", "Lima")]},
            {"role": "tool", "content": "rain", "tool_call_id": "call_0", "name": "get_weather"},
            {"role": "assistant", "content": "Rain in Lima."},
        ],
        "tools": TOOLS,
    },
    "sharegpt": {
        "messages": [
            {"role": "user", "content": "Weather in Kyiv?"},
            {"role": "assistant", "content": None, "tool_calls": [_call("call_1_0", "Kyiv")]},
            {"role": "tool", "content": "snow", "tool_call_id": "call_1_0"},
            {"role": "assistant", "content": "Snow in Kyiv."},
        ],
        "tools": TOOLS,
    },
}
ROWS = {"openai": OPENAI, "text and call": TEXT_AND_CALL, "legacy functions": LEGACY, "sharegpt": SHAREGPT}


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    """A written row without its bookkeeping, messages' keys in a fixed order, for comparing."""
    out = {k: v for k, v in row.items() if not k.startswith("_")}
    out["messages"] = [dict(sorted(m.items())) for m in out["messages"]]
    return out


@pytest.mark.parametrize("name", list(ROWS))
def test_every_tool_format_reaches_the_canonical_chat_and_data_prepare_loses_nothing(
    name: str, tmp_path: Path, tiny_llama: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_seq_len": 2048})
    write_jsonl(tmp_path / "train.jsonl", [ROWS[name]] * 1)
    out = tmp_path / "prepared"
    prepared = runner.invoke(
        app, ["data", "prepare", str(recipe), "--out", str(out), "--set", "data.split.validation=0"]
    )
    assert prepared.exit_code == 0, prepared.output
    (written,) = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert _canonical(written) == _canonical(CANONICAL[name])
    # Read back, the written row is the same record: the canonical form is itself a supported input.
    again = load_split(out / "train.jsonl").records
    assert again == load_split(tmp_path / "train.jsonl").records


BAD = [
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [_call("a", "x") | {"function": {"name": "nope", "arguments": "{}"}}],
                },
            ],
            "tools": TOOLS,
        },
        "messages[1]: calls 'nope', which the row's tools do not define (get_weather)",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": "{city: Paris}"},
                        }
                    ],
                },
            ],
            "tools": TOOLS,
        },
        "messages[1].tool_calls[0].function.arguments: not valid JSON (Expecting property name enclosed in double quotes at character 1)",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "zz", "content": "r"},
                {"role": "assistant", "content": "ok"},
            ],
            "tools": TOOLS,
        },
        "messages[1]: answers call 'zz', which no earlier message made",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [_call("a", "x")]},
                {"role": "assistant", "content": "done"},
            ],
            "tools": TOOLS,
        },
        "messages[2]: call(s) a have no tool result before this assistant turn",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x", "reasoning": "hm"},
                {"role": "assistant", "content": "ok"},
            ]
        },
        "messages[0]: unknown key(s) reasoning; a message has role, content, weight, name, tool_calls, tool_call_id",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": None, "tool_calls": [_call("a", "x"), _call("b", "y")]},
            ],
            "tools": TOOLS,
            "parallel_tool_calls": False,
        },
        "messages[1]: 2 calls, but the row sets parallel_tool_calls: false",
    ),
    (
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]},
        "messages[1].content: missing",
    ),
]


def test_each_bad_tool_row_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [row for row, _ in BAD])
    with pytest.raises(DataError) as refused:
        load_split(path)
    problems = refused.value.problems
    assert len(problems) == len(BAD)
    for line, (problem, (_, reason)) in enumerate(zip(problems, BAD, strict=True), start=1):
        assert problem.startswith(f"{path}:{line}: {reason}"), problem


# ---------------------------------------------------------------------------------------------
# Rendering and the loss mask


@pytest.fixture
def tokenizer(tiny_llama: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_llama)


def _chat(row: dict[str, Any], tmp_path: Path) -> Chat:
    (record,) = load_split(write_jsonl(tmp_path / "row.jsonl", [row])).records
    return record


CHATML_TOOLS_RENDERED = (
    "<|im_start|>system\nYou help with travel.\n\n# Tools\n\nYou may call one or more functions to assist with "
    "the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(TOOLS[0])
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response>\n<tool_response>\n{"celsius": 25}\n'
    "</tool_response><|im_end|>\n<|im_start|>assistant\nParis 21C, Rome 25C.<|im_end|>\n"
)


def test_the_built_in_chatml_tools_rendering_is_pinned(tokenizer: Any, tmp_path: Path) -> None:
    assert not tokenizer.chat_template  # the tiny model ships none: data with tools takes chatml_tools
    assert ensure_chat_template(tokenizer, "auto", tools=True) == "chatml_tools"
    text, spans = render_chat(tokenizer, _chat(OPENAI, tmp_path))
    assert text == CHATML_TOOLS_RENDERED
    assert [text[s.start : s.end] for s in spans] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>',
        "Paris 21C, Rome 25C.<|im_end|>",
    ]


# A template of the model's own that writes tools its own way (Llama-3.1-like JSON calls).
OWN_TOOLS_TEMPLATE = (
    "{% if tools %}<s>tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}CALL {{ c['function'] | tojson }}{% endfor %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def test_a_template_that_writes_tools_is_kept_and_rendering_is_its_own(
    tokenizer: Any, tmp_path: Path
) -> None:
    tokenizer.chat_template = OWN_TOOLS_TEMPLATE
    assert supports_tools(tokenizer)
    assert ensure_chat_template(tokenizer, "auto", tools=True) == "tokenizer"
    chat = _chat(OPENAI, tmp_path)
    text, _ = render_chat(tokenizer, chat)
    own = tokenizer.apply_chat_template(
        message_dicts(chat.messages), tools=tool_dicts(chat.tools), tokenize=False
    )
    assert text == own


def test_a_named_template_that_cannot_write_tools_is_refused_before_any_run(
    tmp_path: Path, tiny_llama: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", data={"template": "llama3"})
    write_jsonl(tmp_path / "train.jsonl", [TEXT_AND_CALL] * 3)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 1
    assert (
        "the data calls functions (tools), and the llama3 chat template cannot render them" in result.output
    )
    assert not (tmp_path / "runs").exists()


def test_the_loss_covers_the_calls_and_the_answer_never_the_tool_results(
    tokenizer: Any, tmp_path: Path
) -> None:
    ensure_chat_template(tokenizer, "auto", tools=True)
    chat = _chat(OPENAI, tmp_path)
    (example,), _ = tokenize_chats(tokenizer, [chat], LengthPolicy(4096))
    ids, labels = example["input_ids"], example["labels"]
    text, spans = render_chat(tokenizer, chat)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    # Exactly the tokens inside the two assistant spans carry the loss, and they decode to them.
    expected = [
        i
        for i, (a, b) in enumerate(encoded["offset_mapping"])
        if any(s.start <= a and b <= s.end for s in spans)
    ]
    assert trained == expected
    assert tokenizer.decode([ids[i] for i in trained]) == "".join(text[s.start : s.end] for s in spans)
    results_at = text.index("<tool_response>")
    tool_tokens = [
        i for i, (a, _) in enumerate(encoded["offset_mapping"]) if results_at <= a < text.index("Paris 21C")
    ]
    assert tool_tokens and not set(tool_tokens) & set(trained)


def test_tool_data_for_a_task_that_does_not_train_calls_is_refused(tmp_path: Path, tiny_t5: Path) -> None:
    held_out = {"validation": str(write_jsonl(tmp_path / "held_out.jsonl", [LEGACY]))}
    recipe = make_recipe(tmp_path, tiny_t5, "seq2seq", data=held_out)
    write_jsonl(tmp_path / "train.jsonl", [TEXT_AND_CALL] * 3)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 1
    assert (
        "the data calls functions (tools, tool_calls), which task seq2seq does not train on" in result.output
    )
    assert "fix: train function calling with task: sft" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()


SEND = {
    "name": "send_message",
    "description": "Send a message.",
    "parameters": {
        "type": "object",
        "properties": {
            "to": {"type": "string"},
            "text": {"type": "string"},
            "card": {"type": "integer"},
            "n": {"type": "integer"},
        },
    },
}


def _send_row(to: str, result: str) -> dict[str, Any]:
    arguments = json.dumps({"to": to, "text": "Call me on +1 415 555 0132", "card": 4111111111111111, "n": 7})
    call = {"id": "c1", "type": "function", "function": {"name": "send_message", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": "Tell my colleague I am late."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": result},
            {"role": "assistant", "content": "Done."},
        ],
        "tools": [{"type": "function", "function": SEND}],
    }


def test_the_data_gates_see_the_calls_arguments_and_the_tool_results(
    tmp_path: Path, tiny_llama: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_seq_len": 2048})
    rows = [
        _send_row("jane.doe@example.com", "sent to jane.doe@example.com"),
        _send_row("jane.doe@example.com", "sent to jane.doe@example.com"),  # an exact duplicate
        _send_row("ann", "sent"),  # the same words but for the arguments and the result: kept
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "prepared"
    options = ["--set", "data.split.validation=0", "--set", "data.pii=mask"]
    result = runner.invoke(app, ["data", "prepare", str(recipe), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(written) == 2
    masked, plain = sorted(written, key=lambda row: row["messages"][2]["content"], reverse=True)
    arguments = json.loads(masked["messages"][1]["tool_calls"][0]["function"]["arguments"])
    # Masked inside the JSON, which stays JSON: a card number written as a number becomes the placeholder.
    assert arguments == {"to": "<EMAIL>", "text": "Call me on <PHONE>", "card": "<CREDIT_CARD>", "n": 7}
    assert masked["messages"][2]["content"] == "sent to <EMAIL>"
    assert json.loads(plain["messages"][1]["tool_calls"][0]["function"]["arguments"])["to"] == "ann"
    record = load_split(tmp_path / "train.jsonl").records[0]
    assert ("turn 2 (call send_message)", record.messages[1].tool_calls[0].arguments) in row_texts(record)
