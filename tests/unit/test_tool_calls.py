"""Tool calls as text: the block format_tool_call writes, what parse_tool_calls reads back (and refuses),
and score_tool_calls' values on hand-made cases and against scikit-learn's micro F1."""

from __future__ import annotations

import json
import math
import random
import string
from typing import Any

import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support
from sklearn.preprocessing import MultiLabelBinarizer

from tunelab.evaluation.tool_calls import (
    Call,
    ParsedAnswer,
    canonical_json,
    format_tool_call,
    parse_tool_calls,
    score_tool_calls,
    tool_args_f1,
)

WEATHER = Call("get_weather", {"city": "Paris", "unit": "celsius"})
BLOCK = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
)

# ---------------------------------------------------------------------------------------------
# format_tool_call


def test_format_writes_the_hermes_block_name_first_and_keeps_argument_order() -> None:
    assert format_tool_call("get_weather", {"city": "Paris", "unit": "celsius"}) == BLOCK
    assert format_tool_call("f", {"b": 1, "a": [True, None]}) == (
        '<tool_call>\n{"name": "f", "arguments": {"b": 1, "a": [true, null]}}\n</tool_call>'
    )


def test_format_writes_non_ascii_as_itself_and_refuses_nan() -> None:
    assert format_tool_call("lookup", {"city": "Zürich"}) == (
        '<tool_call>\n{"name": "lookup", "arguments": {"city": "Zürich"}}\n</tool_call>'
    )
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        format_tool_call("f", {"x": math.nan})


# A Qwen2.5-style assistant turn (the shape of its template's tool-call loop), rendered by transformers'
# own chat-template engine, whose `tojson` keeps key order and non-ASCII characters.
QWEN_STYLE = (
    "{%- for message in messages %}{{- message.content }}"
    "{%- for tool_call in message.tool_calls %}{%- set tool_call = tool_call.function %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endfor %}"
)


def test_format_agrees_with_a_qwen_style_chat_template(tokenizer: Any) -> None:
    calls = [Call("get_weather", {"unit": "celsius", "city": "Zürich"}), Call("get_time", {})]
    message = {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ],
    }
    rendered = tokenizer.apply_chat_template([message], chat_template=QWEN_STYLE, tokenize=False)
    assert rendered == "Let me check.\n" + "\n".join(format_tool_call(c.name, c.arguments) for c in calls)
    assert parse_tool_calls(rendered) == ParsedAnswer("Let me check.", tuple(calls), ())


# ---------------------------------------------------------------------------------------------
# parse_tool_calls


def test_parse_reads_several_blocks_in_order_after_prose() -> None:
    time = Call("get_time", {"tz": "Europe/Paris"})
    text = "Let me look.\n" + BLOCK + "\n" + format_tool_call(time.name, time.arguments)
    assert parse_tool_calls(text) == ParsedAnswer("Let me look.", (WEATHER, time), ())


def test_parse_of_prose_only_is_content_without_calls() -> None:
    assert parse_tool_calls("  It is sunny in Paris.\n") == ParsedAnswer("It is sunny in Paris.", (), ())


def test_parse_tolerates_whitespace_and_key_order_inside_the_block() -> None:
    text = (
        '<tool_call>{ "arguments" : {"unit":"celsius","city":"Paris"},\n  "name":"get_weather" }</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert parsed == ParsedAnswer("", (WEATHER,), ())
    assert list(parsed.calls[0].arguments) == ["unit", "city"]  # as written, not re-sorted


def test_parse_decodes_arguments_given_as_a_json_string() -> None:
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}\n</tool_call>'
    assert parse_tool_calls(text) == ParsedAnswer("", (WEATHER,), ())


def test_parse_reads_missing_arguments_as_a_call_without_parameters() -> None:
    assert parse_tool_calls('<tool_call>{"name": "get_time"}</tool_call>').calls == (Call("get_time", {}),)


def test_a_string_argument_holding_the_closing_tag_does_not_cut_the_block() -> None:
    call = Call("echo", {"text": "say </tool_call> then <tool_call>"})
    assert parse_tool_calls(format_tool_call(call.name, call.arguments)) == ParsedAnswer("", (call,), ())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("get_weather(city='Paris')", "not JSON (Expecting value)"),
        ('{"name": "a", "arguments": {}} and more', "not JSON (Extra data)"),
        ('{"name": "a", "arguments": {"x": NaN}}', "not JSON (NaN is not JSON)"),
        ('[{"name": "a", "arguments": {}}]', "not a JSON object"),
        ('{"arguments": {"city": "Paris"}}', 'no name (a non-empty string "name" is required)'),
        ('{"name": " ", "arguments": {}}', 'no name (a non-empty string "name" is required)'),
        ('{"name": 3, "arguments": {}}', 'no name (a non-empty string "name" is required)'),
        ('{"name": "a", "arguments": ["Paris"]}', "arguments not an object (got list)"),
        ('{"name": "a", "arguments": null}', "arguments not an object (got NoneType)"),
        ('{"name": "a", "arguments": "city=Paris"}', "arguments not an object (a string that is not JSON)"),
        ('{"name": "a", "arguments": "[1, 2]"}', "arguments not an object (got list)"),
    ],
)
def test_a_block_that_does_not_parse_is_an_error_not_a_call(body: str, error: str) -> None:
    parsed = parse_tool_calls(f"Sure.\n<tool_call>\n{body}\n</tool_call>\n{BLOCK}")
    assert parsed == ParsedAnswer("Sure.", (WEATHER,), (f"tool call 1: {error}",))


def test_an_unclosed_block_is_an_error_and_the_blocks_after_it_still_count() -> None:
    truncated = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    assert parse_tool_calls("Checking. " + truncated) == ParsedAnswer(
        "Checking.", (), ("tool call 1: unclosed <tool_call>",)
    )
    complete_json = '<tool_call>\n{"name": "get_time", "arguments": {}}\n'
    assert parse_tool_calls(BLOCK + "\n" + complete_json + BLOCK) == ParsedAnswer(
        "", (WEATHER, WEATHER), ("tool call 2: unclosed <tool_call>",)
    )
    assert parse_tool_calls(truncated + BLOCK).errors == ("tool call 1: unclosed <tool_call>",)


def test_a_stray_closing_tag_stays_in_the_content() -> None:
    assert parse_tool_calls("done </tool_call>") == ParsedAnswer("done </tool_call>", (), ())


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "object"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        alphabet = string.printable + "éßü漢字😀" + "<>/\\\"'"
        pieces = [rng.choice(alphabet) for _ in range(rng.randint(0, 12))]
        pieces += [rng.choice(["", "<tool_call>", "</tool_call>", "\n"])]
        rng.shuffle(pieces)
        return "".join(pieces)
    if kind == "int":
        return rng.randint(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6) * rng.choice([1.0, 1e-9, 1e12])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return _random_arguments(rng, depth + 1)


def _random_arguments(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    keys = [
        "".join(rng.choice(string.ascii_letters + "_ü") for _ in range(rng.randint(1, 8))) for _ in range(5)
    ]
    return {key: _random_value(rng, depth) for key in keys[: rng.randint(0, 5)]}


def test_what_format_writes_parse_reads_back_exactly() -> None:
    # A property over many random calls: names and arguments come back equal, with the same JSON
    # types (True is not read back as 1) and the same key order, whatever the strings hold.
    rng = random.Random(29)
    for _ in range(400):
        calls = [
            Call(rng.choice(["f", "get_weather", "日本_lookup", "a.b-c"]), _random_arguments(rng))
            for _ in range(rng.randint(1, 3))
        ]
        prose = rng.choice(["", "Sure, calling it.", "Let me <check>."])
        text = prose + "\n" + "\n".join(format_tool_call(call.name, call.arguments) for call in calls)
        parsed = parse_tool_calls(text)
        assert parsed == ParsedAnswer(prose, tuple(calls), ())
        for back, call in zip(parsed.calls, calls, strict=True):
            assert json.dumps(back.arguments) == json.dumps(call.arguments)


# ---------------------------------------------------------------------------------------------
# canonical values and scores


def test_canonical_json_ignores_key_order_and_1_point_0_but_not_booleans_or_strings() -> None:
    assert canonical_json({"b": 1.0, "a": {"y": [1, 2.0], "x": None}}) == '{"a":{"x":null,"y":[1,2]},"b":1}'
    assert canonical_json(1) == canonical_json(1.0) != canonical_json(True)
    assert canonical_json("1") != canonical_json(1)
    assert canonical_json([1, 2]) != canonical_json([2, 1])  # a list's order is part of its value


def _parse_all(texts: list[str]) -> list[ParsedAnswer]:
    return [parse_tool_calls(text) for text in texts]


def _block(name: str, arguments: dict[str, Any]) -> str:
    return format_tool_call(name, arguments)


TIME = Call("get_time", {"tz": "Europe/Paris"})
SEARCH = Call("search", {"query": "y", "limit": 1})

# (reference calls, predicted text) and what each example contributes, worked out by hand:
# name match, exact match, (predicted triples, reference triples, shared triples), made a call, unparsed.
CASES: list[tuple[list[Call], str]] = [
    # 1: both calls, in the other order, arguments' keys permuted: all right; triples 3/3/3.
    (
        [WEATHER, TIME],
        _block("get_time", TIME.arguments) + _block("get_weather", {"unit": "celsius", "city": "Paris"}),
    ),
    # 2: wrong argument value: names right, not exact; triples pred 2, ref 2, shared 1.
    ([WEATHER], _block("get_weather", {"city": "Paris", "unit": "fahrenheit"})),
    # 3: an extra argument: pred 2, ref 1, shared 1.
    ([Call("get_weather", {"city": "Rome"})], _block("get_weather", {"city": "Rome", "unit": "celsius"})),
    # 4: a missing argument: pred 1, ref 2, shared 1.
    ([Call("get_weather", {"city": "Oslo", "unit": "celsius"})], _block("get_weather", {"city": "Oslo"})),
    # 5: a block that is not JSON: no call, unparsed; pred 0, ref 2.
    ([Call("search", {"query": "x", "limit": 5})], "<tool_call>\nsearch(query='x', limit=5)\n</tool_call>"),
    # 6: prose reference, prose answer.
    ([], "Hello! How can I help?"),
    # 7: prose reference, but the model called something (its triples do not enter F1).
    ([], _block("get_weather", {"city": "Paris"})),
    # 8: arguments as a JSON string, 1.0 for 1: exact; pred 2, ref 2, shared 2.
    (
        [SEARCH],
        '<tool_call>\n{"name": "search", "arguments": "{\\"limit\\": 1.0, \\"query\\": \\"y\\"}"}\n</tool_call>',
    ),
    # 9: an unclosed block: no call, unparsed; pred 0, ref 1.
    (
        [Call("get_weather", {"city": "Paris"})],
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}',
    ),
]


def test_scores_on_hand_made_cases() -> None:
    references = [ref for ref, _ in CASES]
    predictions = _parse_all([text for _, text in CASES])
    # Seven examples have reference calls (1-5, 8, 9) and two are prose (6, 7).
    # Names: all but 5 and 9. Exact: 1 and 8. F1: 2*8 / (10 predicted + 13 reference triples).
    assert score_tool_calls(references, predictions, "eval") == {
        "eval_tool_unparsed": 2 / 9,
        "eval_tool_name_accuracy": 5 / 7,
        "eval_tool_args_exact_match": 2 / 7,
        "eval_tool_args_f1": 16 / 23,
        "eval_tool_call_rate": 5 / 7,
        "eval_tool_false_calls": 1 / 2,
    }


def test_exact_match_is_strict_about_types_and_counts_repeated_calls() -> None:
    reference = [Call("set", {"flag": True, "n": 1})]
    assert score_tool_calls([reference], _parse_all([_block("set", {"n": 1.0, "flag": True})]), "t") == {
        "t_tool_unparsed": 0.0,
        "t_tool_name_accuracy": 1.0,
        "t_tool_args_exact_match": 1.0,
        "t_tool_args_f1": 1.0,
        "t_tool_call_rate": 1.0,
    }
    scores = score_tool_calls([reference], _parse_all([_block("set", {"flag": 1, "n": 1})]), "t")
    assert (scores["t_tool_args_exact_match"], scores["t_tool_args_f1"]) == (0.0, 0.5)
    twice = _parse_all([_block("set", {"flag": True, "n": 1}) * 2])
    scores = score_tool_calls([reference], twice, "t")
    assert (scores["t_tool_name_accuracy"], scores["t_tool_args_exact_match"]) == (0.0, 0.0)
    assert scores["t_tool_args_f1"] == 2 * 2 / (4 + 2)  # each triple is shared once, not twice


def test_scores_over_no_examples_of_a_kind_are_left_out() -> None:
    only_prose = score_tool_calls([[]], _parse_all(["Hi."]), "p")
    assert only_prose == {"p_tool_unparsed": 0.0, "p_tool_false_calls": 0.0}
    no_arguments = score_tool_calls([[Call("get_time", {})]], _parse_all([_block("get_time", {})]), "p")
    assert no_arguments["p_tool_args_f1"] == 1.0  # no triple on either side: nothing missed or invented


def test_scores_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match=r"^1 predictions but 2 references$"):
        score_tool_calls([[], []], _parse_all(["Hi."]), "p")
    with pytest.raises(ValueError, match=r"^no predictions to score$"):
        score_tool_calls([], [], "p")


def test_f1_is_scikit_learns_micro_f1_over_the_triples() -> None:
    # Each example is a sample whose labels are its (name, key, value) triples; micro averaging pools
    # them across samples, which is the definition score_tool_calls documents.
    rng = random.Random(7)
    names, keys, values = ["get_weather", "search"], ["city", "unit", "limit"], ["Paris", "Oslo", 1, 2, True]
    references: list[list[Call]] = []
    predictions: list[ParsedAnswer] = []
    for _ in range(60):
        reference = [
            Call(name, {k: rng.choice(values) for k in rng.sample(keys, rng.randint(1, 3))}) for name in names
        ]
        # Most arguments right, some with another value, a few left out.
        predicted = [
            Call(c.name, {k: v if rng.random() < 0.7 else rng.choice(values) for k, v in c.arguments.items()})
            for c in reference
        ]
        predicted = [
            Call(c.name, {k: v for k, v in c.arguments.items() if rng.random() < 0.9}) for c in predicted
        ]
        if rng.random() < 0.3:
            predicted.append(Call("search", {"query": "extra"}))
        references.append(reference)
        predictions.append(ParsedAnswer("", tuple(predicted[: rng.randint(0, len(predicted))])))

    def triples(calls: tuple[Call, ...] | list[Call]) -> set[str]:
        return {f"{c.name}|{k}|{json.dumps(v)}" for c in calls for k, v in c.arguments.items()}

    binarizer = MultiLabelBinarizer().fit(
        [triples(r) | triples(p.calls) for r, p in zip(references, predictions, strict=True)]
    )
    y_true = binarizer.transform([triples(r) for r in references])
    y_pred = binarizer.transform([triples(p.calls) for p in predictions])
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="micro")
    assert 0.2 < f1 < 0.9  # the data exercises misses and inventions alike
    assert tool_args_f1(references, predictions) == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    assert score_tool_calls(references, predictions, "s")["s_tool_args_f1"] == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
