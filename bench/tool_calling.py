"""Issue 29's measurements on a finished function-calling run (recipes/tools-smollm2-lora.yaml).

    # the verdict's answers (generations.jsonl) rescored per model, with 95% intervals:
    .venv/bin/python bench/tool_calling.py scores runs/tools-smollm2-lora-TIME
    # the same test rows asked through `tunelab serve` with the official openai client (`tools=`), the
    # run exported merged first; the served calls are compared with the reference and with the verdict's:
    .venv/bin/tunelab export runs/tools-smollm2-lora-TIME --merge --out /tmp/tools-merged
    .venv/bin/python bench/tool_calling.py serve runs/tools-smollm2-lora-TIME --model /tmp/tools-merged

Intervals: Wilson for a share over the rows with a reference call; for the difference between two
models on the same rows, a paired percentile bootstrap over rows (2,000 draws, seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serving import client, live_server

from tunelab.evaluation.tool_calls import Call, ParsedAnswer, canonical_json, parse_tool_calls
from tunelab.files import GENERATIONS_FILE, read_generation_rows
from tunelab.serving.config import load_serve_config

MODELS = ("zero_shot", "few_shot", "fine_tuned")
REPO = Path(__file__).resolve().parents[1]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a share: honest near 0 and 1 where the normal approximation is not."""
    if n == 0:
        return (math.nan, math.nan)
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(a: list[bool], b: list[bool], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(a) - mean(b), resampling rows (both models answered the same rows)."""
    diff = np.array(a, dtype=float) - np.array(b, dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(diff), size=(n_boot, len(diff)))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def call_key(calls: tuple[Call, ...] | list[Call]) -> Counter[tuple[str, str]]:
    """Calls as a multiset of (name, canonical arguments): equal exactly when tunelab's exact match is."""
    return Counter((call.name, canonical_json(call.arguments)) for call in calls)


def exact(reference: ParsedAnswer, answer: ParsedAnswer) -> bool:
    return call_key(reference.calls) == call_key(answer.calls)


def scores(run: Path) -> dict[str, Any]:
    rows = read_generation_rows(run / GENERATIONS_FILE)
    references = [parse_tool_calls(row["reference"]) for row in rows]
    with_calls = [i for i, ref in enumerate(references) if ref.calls]
    prose = [i for i, ref in enumerate(references) if not ref.calls]
    hits: dict[str, list[bool]] = {}
    out: dict[str, Any] = {"rows": len(rows), "with_calls": len(with_calls), "prose": len(prose)}
    for model in MODELS:
        answers = [parse_tool_calls(row[model]) for row in rows]
        hits[model] = [exact(references[i], answers[i]) for i in with_calls]
        names = [call_names(references[i]) == call_names(answers[i]) for i in with_calls]
        false_calls = sum(bool(answers[i].calls) for i in prose)
        out[model] = {
            "args_exact_match": _share(hits[model]),
            "name_accuracy": _share(names),
            "false_calls": f"{false_calls}/{len(prose)}",
            "unparsed": sum(bool(answer.errors) for answer in answers),
        }
    for baseline in ("zero_shot", "few_shot"):
        difference = _mean(hits["fine_tuned"]) - _mean(hits[baseline])
        low, high = paired_bootstrap(hits["fine_tuned"], hits[baseline])
        out[f"fine_tuned_minus_{baseline}"] = f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]"
    return out


def call_names(answer: ParsedAnswer) -> Counter[str]:
    return Counter(call.name for call in answer.calls)


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def _share(flags: list[bool]) -> str:
    low, high = wilson(sum(flags), len(flags))
    return f"{_mean(flags):.3f} [{low:.3f}, {high:.3f}] ({sum(flags)}/{len(flags)})"


def serve(run: Path, model: Path, max_tokens: int) -> dict[str, Any]:
    """Every test row asked through the server: the row's messages up to the scored turn, its tools."""
    rows = [json.loads(line) for line in (REPO / "examples/data/tools_test.jsonl").read_text().splitlines()]
    verdict = {row["source"]: row for row in read_generation_rows(run / GENERATIONS_FILE)}
    with tempfile.TemporaryDirectory() as root:
        config = load_serve_config(None, root=Path(root), models={"tools": {"path": str(model)}})
        with live_server(config) as (url, key):
            api = client(url, key)
            started = time.time()
            served = [_ask(api, row, max_tokens) for row in rows]
            seconds = time.time() - started
    references = [_reference(row) for row in rows]
    sources = [f"examples/data/tools_test.jsonl:{i + 1}" for i in range(len(rows))]
    verdict_calls = [parse_tool_calls(verdict[s]["fine_tuned"]) if s in verdict else None for s in sources]
    with_calls = [i for i, ref in enumerate(references) if ref]
    hits = [call_key(served[i]) == call_key(references[i]) for i in with_calls]
    compared = [i for i, given in enumerate(verdict_calls) if given is not None]
    agree = [call_key(served[i]) == call_key(verdict_calls[i].calls) for i in compared]  # type: ignore[union-attr]
    return {
        "rows": len(rows),
        "served_args_exact_match": _share(hits),
        "served_equal_to_verdict_calls": f"{sum(agree)}/{len(compared)}",
        "false_calls": f"{sum(bool(served[i]) for i, ref in enumerate(references) if not ref)}/"
        f"{len(rows) - len(with_calls)}",
        "seconds": round(seconds, 1),
        "example": _example(api_rows=rows, served=served),
    }


def _ask(api: Any, row: dict[str, Any], max_tokens: int) -> list[Call]:
    messages = row["messages"][:-1]  # up to the scored assistant turn
    reply = api.chat.completions.create(
        model="tools", messages=messages, tools=row["tools"], temperature=0, max_tokens=max_tokens
    )
    calls = reply.choices[0].message.tool_calls or []
    return [Call(call.function.name, json.loads(call.function.arguments)) for call in calls]


def _reference(row: dict[str, Any]) -> list[Call]:
    last = row["messages"][-1]
    return [
        Call(c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in last.get("tool_calls") or []
    ]


def _example(api_rows: list[dict[str, Any]], served: list[list[Call]]) -> dict[str, Any]:
    first = next(i for i, row in enumerate(api_rows) if row["messages"][-1].get("tool_calls"))
    return {
        "asked": api_rows[first]["messages"][-2]["content"],
        "tool_calls": [vars(c) for c in served[first]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["scores", "serve"])
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", type=Path, help="serve: the run exported with --merge")
    parser.add_argument("--max-tokens", type=int, default=64)  # the recipe's eval.max_new_tokens
    args = parser.parse_args()
    result = scores(args.run) if args.what == "scores" else serve(args.run, args.model, args.max_tokens)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
