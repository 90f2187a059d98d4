"""Tool calls written as text, parsed back and scored against reference calls.

A model taught OpenAI function calling writes each call as one Hermes / Qwen2.5 block,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
    </tool_call>

possibly several in a row and possibly after some prose. `format_tool_call` renders that block and
`parse_tool_calls` reads it back, so what training shows the model and what evaluation expects of it
are the same text. A block that does not parse is kept as an error, never guessed at: a call the
model got wrong must count as wrong. `score_tool_calls` then says how close the predicted calls came
to the references, from "called the right functions" down to "passed every argument right".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class Call:
    """One function call: the function's name and its arguments, already parsed from JSON."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedAnswer:
    """A generated answer split into its prose (`content`, stripped), the calls its `<tool_call>`
    blocks hold, in order, and one line per block that did not parse (`errors`)."""

    content: str
    calls: tuple[Call, ...] = ()
    errors: tuple[str, ...] = ()


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which are not JSON; NaN would also never equal itself.
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """The block for one call, exactly as `parse_tool_calls` reads it: `<tool_call>`, a newline, the
    JSON object `{"name": ..., "arguments": {...}}` (name first, the arguments' own key order kept,
    non-ASCII characters written as themselves), a newline, `</tool_call>`. Several calls are several
    blocks. NaN and infinities raise ValueError, since the parser rejects them as not JSON."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False, allow_nan=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def parse_tool_calls(text: str) -> ParsedAnswer:
    """Split `text` into prose and `<tool_call>` blocks, and read each block as one call.

    A block's JSON is read first and the closing tag looked for after it, so a string argument that
    contains `</tool_call>` does not cut the block short. A block is an error, not a call, when it is
    not JSON, not a JSON object, has no non-empty string "name", has "arguments" that are neither an
    object nor a string holding one (a missing "arguments" is an empty object: a call without
    parameters), or is never closed (a `</tool_call>` must follow before the next `<tool_call>`).
    Keys other than "name" and "arguments" are ignored. Text outside the blocks (an unclosed block
    and a stray `</tool_call>` included) is kept as `content`, stripped.
    """
    content: list[str] = []
    calls: list[Call] = []
    errors: list[str] = []
    position = 0
    while (start := text.find(OPEN, position)) >= 0:
        content.append(text[position:start])
        outcome, position = _read_block(text, start + len(OPEN))
        if isinstance(outcome, Call):
            calls.append(outcome)
        else:
            errors.append(f"tool call {len(calls) + len(errors) + 1}: {outcome}")
    content.append(text[position:])
    return ParsedAnswer("".join(content).strip(), tuple(calls), tuple(errors))


def _read_block(text: str, body_start: int) -> tuple[Call | str, int]:
    """The call (or why not) in the block whose body starts at `body_start`, and where reading goes on."""
    begin = _skip_whitespace(text, body_start)
    try:
        value, after = _DECODER.raw_decode(text, begin)
    except ValueError:
        value, after = None, -1
    if after >= 0:
        close = _skip_whitespace(text, after)
        if text.startswith(CLOSE, close):
            return _as_call(value), close + len(CLOSE)
    # The JSON did not parse or something other than the closing tag follows it: the block ends at
    # the next closing tag, unless another block (or the end of the text) comes first.
    close = text.find(CLOSE, body_start)
    next_open = text.find(OPEN, body_start)
    if close < 0 or 0 <= next_open < close:
        return f"unclosed {OPEN}", (next_open if next_open >= 0 else len(text))
    return f"not JSON ({_json_problem(text[body_start:close])})", close + len(CLOSE)


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _json_problem(body: str) -> str:
    """json's own words for why `body` is not one JSON value."""
    try:
        _DECODER.decode(body.strip())
    except ValueError as exc:
        return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
    return "not one JSON value"  # not reached in practice: a body that decodes alone is read above


def _as_call(value: Any) -> Call | str:
    """A parsed block's JSON as a Call, or the reason it is not one."""
    if not isinstance(value, dict):
        return "not a JSON object"
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'no name (a non-empty string "name" is required)'
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        # Some templates (OpenAI's own wire format) carry the arguments as a JSON-encoded string.
        try:
            arguments = _DECODER.decode(arguments)
        except ValueError:
            return "arguments not an object (a string that is not JSON)"
    if not isinstance(arguments, dict):
        return f"arguments not an object (got {type(arguments).__name__})"
    return Call(name, arguments)


# ---------------------------------------------------------------------------------------------
# scores


def canonical_json(value: Any) -> str:
    """One string per JSON value, so that equal values compare equal: object keys sorted, no
    whitespace, integral numbers written as integers (1 and 1.0 are equal), booleans kept apart
    from numbers (true is not 1), strings never equal to numbers ("1" is not 1)."""
    return json.dumps(_canonical(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def score_tool_calls(
    references: Sequence[Sequence[Call]], predictions: Sequence[ParsedAnswer], prefix: str
) -> dict[str, float]:
    """Scores (0-1) of predicted calls against reference calls, one pair per example.

    An example whose reference has no calls is a prose answer; it counts only in
    `{prefix}_tool_false_calls` and `{prefix}_tool_unparsed`. Over the examples whose reference has
    calls:

    - `{prefix}_tool_name_accuracy`: share whose predicted function names, as a multiset, equal the
      reference's (order does not matter; calling a function twice instead of once does).
    - `{prefix}_tool_args_exact_match`: share whose predicted calls equal the reference calls, names
      and arguments, as a multiset (the order of the calls does not matter). Arguments compare as
      parsed JSON (`canonical_json`): key order and whitespace do not matter, 1 equals 1.0, true is
      not 1, and an extra or a missing argument is a mismatch.
    - `{prefix}_tool_args_f1`: micro F1 over (function name, argument key, canonical JSON value)
      triples, pooled across examples: 2*TP / (predicted triples + reference triples), a triple
      being a true positive when the same example's reference holds it too (as many times as
      both hold it). A call without arguments adds no triple; when there are none at all, F1 is 1.
    - `{prefix}_tool_call_rate`: share in which the prediction made at least one call.

    Over the prose examples, `{prefix}_tool_false_calls`: share in which the prediction called
    something. Over all examples, `{prefix}_tool_unparsed`: share of predictions holding a
    `<tool_call>` block that did not parse. A score over no examples is left out rather than given
    a number that would read as a result.
    """
    _check_lengths(references, predictions)
    with_calls = [(list(ref), pred) for ref, pred in zip(references, predictions, strict=True) if ref]
    prose = [pred for ref, pred in zip(references, predictions, strict=True) if not ref]
    scores = {f"{prefix}_tool_unparsed": _share([bool(pred.errors) for pred in predictions])}
    if with_calls:
        scores.update(
            {
                f"{prefix}_tool_name_accuracy": _share([_names(r) == _names(p.calls) for r, p in with_calls]),
                f"{prefix}_tool_args_exact_match": _share(
                    [_calls(r) == _calls(p.calls) for r, p in with_calls]
                ),
                f"{prefix}_tool_args_f1": tool_args_f1(
                    [r for r, _ in with_calls], [p for _, p in with_calls]
                ),
                f"{prefix}_tool_call_rate": _share([bool(p.calls) for _, p in with_calls]),
            }
        )
    if prose:
        scores[f"{prefix}_tool_false_calls"] = _share([bool(pred.calls) for pred in prose])
    return scores


def tool_args_f1(references: Sequence[Sequence[Call]], predictions: Sequence[ParsedAnswer]) -> float:
    """Micro F1 over (name, argument key, canonical value) triples; see `score_tool_calls`."""
    _check_lengths(references, predictions)
    hits = predicted = expected = 0
    for ref, pred in zip(references, predictions, strict=True):
        ref_triples, pred_triples = argument_triples(ref), argument_triples(pred.calls)
        hits += sum((ref_triples & pred_triples).values())
        predicted += sum(pred_triples.values())
        expected += sum(ref_triples.values())
    return 1.0 if predicted + expected == 0 else 2 * hits / (predicted + expected)


def argument_triples(calls: Sequence[Call]) -> Counter[tuple[str, str, str]]:
    """The multiset of (function name, argument key, canonical JSON value) over `calls`."""
    return Counter(
        (call.name, key, canonical_json(value)) for call in calls for key, value in call.arguments.items()
    )


def _names(calls: Sequence[Call]) -> Counter[str]:
    return Counter(call.name for call in calls)


def _calls(calls: Sequence[Call]) -> Counter[tuple[str, str]]:
    return Counter((call.name, canonical_json(call.arguments)) for call in calls)


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def _check_lengths(references: Sequence[Sequence[Call]], predictions: Sequence[ParsedAnswer]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
