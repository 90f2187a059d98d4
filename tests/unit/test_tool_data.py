"""bench/tool_data.py: the shipped function-calling files are what the script generates, rows are OpenAI's
function-calling fine-tuning rows, and test requests are phrased unlike train's."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import string
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "tool_data.py"
DATA = REPO / "examples" / "data"
FUNCTIONS = {"get_weather", "convert_currency", "set_timer", "find_flight"}


@pytest.fixture(scope="module")
def tool_data() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tool_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"tools_{split}.jsonl").read_text("utf-8").splitlines()]


def calls(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [call for message in row["messages"] for call in message.get("tool_calls") or []]


def user_text(row: dict[str, Any]) -> str:
    return row["messages"][1]["content"]


def test_the_shipped_files_equal_a_fresh_generation() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "3 files match a fresh generation"), done.stderr


def test_check_fails_when_a_file_differs(tool_data: ModuleType, tmp_path: Path) -> None:
    assert tool_data.main(["--out", str(tmp_path)]) == 0
    assert tool_data.main(["--check", "--out", str(tmp_path)]) == 0
    test_file = tmp_path / "tools_test.jsonl"
    test_file.write_text("".join(test_file.read_text("utf-8").splitlines(keepends=True)[:-1]), "utf-8")
    assert tool_data.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("split", "rows", "no_tool", "follow_ups"),
    [("train", 400, 60, 40), ("validation", 60, 9, 0), ("test", 100, 15, 0)],
)
def test_row_counts_and_mix(split: str, rows: int, no_tool: int, follow_ups: int) -> None:
    data = read(split)
    assert len(data) == rows
    assert sum(not calls(row) for row in data) == no_tool
    assert sum(any(m["role"] == "tool" for m in row["messages"]) for row in data) == follow_ups
    per_function = [sum(c["function"]["name"] == f for row in data for c in calls(row)) for f in FUNCTIONS]
    assert max(per_function) - min(per_function) <= 1 and sum(per_function) == rows - no_tool


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_row_is_an_openai_function_calling_row(split: str) -> None:
    for row in read(split):
        assert (
            set(row) == {"messages", "tools", "parallel_tool_calls"} and row["parallel_tool_calls"] is False
        )
        tools = {tool["function"]["name"]: tool["function"]["parameters"] for tool in row["tools"]}
        assert set(tools) == FUNCTIONS and {tool["type"] for tool in row["tools"]} == {"function"}
        assert [m["role"] for m in row["messages"][:2]] == ["system", "user"]
        for call in calls(row):
            arguments = json.loads(call["function"]["arguments"])
            schema = tools[call["function"]["name"]]
            assert set(schema["required"]) <= set(arguments) <= set(schema["properties"])
            assert call["type"] == "function" and re.fullmatch(r"call_[A-Za-z0-9]{24}", call["id"])
        ids = [call["id"] for call in calls(row)]
        answered = [m["tool_call_id"] for m in row["messages"] if m["role"] == "tool"]
        assert len(set(ids)) == len(ids) and set(answered) <= set(ids)
        # Validation and test end on what is scored: the call, or the prose answer.
        assert len(row["messages"]) == 3 or (split == "train" and len(row["messages"]) == 5)
        assert row["messages"][-1]["role"] == "assistant"


def train_fixed_texts(tool_data: ModuleType) -> list[str]:
    templates = [t for kind in tool_data.TEMPLATES["train"].values() for t in kind]
    pieces = [literal.strip() for t in templates for literal, *_ in string.Formatter().parse(t)]
    no_tool = [request for request, _ in tool_data.SMALL_TALK["train"] + tool_data.QUESTIONS["train"]]
    return [piece for piece in pieces if len(piece.split()) >= 3] + no_tool


def test_no_test_request_equals_or_contains_train_phrasing(tool_data: ModuleType) -> None:
    tests = [user_text(row).lower() for row in read("test")]
    seen = {user_text(row).lower() for split in ("train", "validation") for row in read(split)}
    assert len(train_fixed_texts(tool_data)) > 40
    assert [text for text in tests if text in seen] == []
    assert [(t, p) for t in tests for p in train_fixed_texts(tool_data) if p.lower() in t] == []
    shapes = [
        "".join(
            re.escape(literal) + (".+" if slot else "") for literal, slot, *_ in string.Formatter().parse(t)
        )
        for kind in tool_data.TEMPLATES["train"].values()
        for t in kind
    ]
    assert [(t, s) for t in tests for s in shapes if re.fullmatch(s, t, flags=re.IGNORECASE)] == []


def test_test_only_values_never_reach_train_and_fill_half_the_test_calls(tool_data: ModuleType) -> None:
    seen = "\n".join((DATA / f"tools_{split}.jsonl").read_text("utf-8") for split in ("train", "validation"))
    assert [v for v in tool_data.TEST_ONLY if re.search(rf"\b{re.escape(v)}\b", seen)] == []
    test_calls = [row for row in read("test") if calls(row)]
    novel = [row for row in test_calls if any(v in user_text(row) for v in tool_data.TEST_ONLY)]
    assert len(novel) / len(test_calls) >= 0.4


def break_row(row: dict[str, Any], how: str) -> dict[str, Any]:
    row = copy.deepcopy(row)
    call = row["messages"][2]["tool_calls"][0]
    if how == "unknown function":
        call["function"]["name"] = "book_hotel"
    elif how == "missing argument":
        call["function"]["arguments"] = json.dumps({"origin": "Paris", "date": "2026-05-01"})
    elif how == "bad json":
        call["function"]["arguments"] = "{'city': 'Paris'"
    else:
        orphan = {"role": "tool", "tool_call_id": "call_nobody", "content": "{}"}
        row["messages"] += [orphan, {"role": "assistant", "content": "Here you are."}]
    return row


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("unknown function", "calls book_hotel, which the row's tools do not define"),
        ("missing argument", "a required argument of find_flight is missing"),
        ("bad json", "Expecting property name enclosed in double quotes"),
        ("orphan result", "a tool message answers no call"),
    ],
)
def test_the_script_rejects_a_broken_row(tool_data: ModuleType, how: str, error: str) -> None:
    flight = next(
        row for row in read("test") if [c["function"]["name"] for c in calls(row)] == ["find_flight"]
    )
    tool_data.check_row(flight, "row 1")
    with pytest.raises((AssertionError, json.JSONDecodeError), match=re.escape(error)):
        tool_data.check_row(break_row(flight, how), "row 1")
