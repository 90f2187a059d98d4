"""Writing what will be trained on: the cleaned splits as canonical JSONL, and report.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.records import Record

if TYPE_CHECKING:
    from tunelab.data.pipeline import PreparedData, Records


def record_to_json(record: Record) -> dict[str, Any]:
    """Canonical record -> a JSON row that tunelab reads back as the same record (plus its source)."""
    row = asdict(record)
    source = row.pop("source")
    if "messages" in row:
        row["messages"] = [_message(m) for m in row["messages"]]
    if "prompt" in row:
        row["prompt"] = [_message(m) for m in row["prompt"]]
    if row.get("text_pair") is None:
        row.pop("text_pair", None)
    if "tools" in row:  # a chat: its tools as OpenAI writes them, or nothing when it has none
        tools = row.pop("tools")
        row.update({"tools": [json.loads(tool) for tool in tools]} if tools else {})
        if row["parallel_tool_calls"] is None:
            row.pop("parallel_tool_calls")
    return {**row, "_source": source}


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as OpenAI writes it: calls as {id, type, function: {name, arguments}}, and content null
    beside them when there is no text."""
    calls = message.pop("tool_calls", ())
    out = {k: v for k, v in message.items() if v is not None}
    if calls:
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in calls
        ]
        if not out["content"]:
            out["content"] = None
    return out


def write_prepared(out_dir: Path, records: Records, prepared: PreparedData | None) -> dict[str, int]:
    """The cleaned splits as canonical JSONL (only rows that survive tokenisation) and report.json.
    Returns the rows written per split: what training sees, and what to tell the user."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for split, items in records.splits.items():
        left_out: set[str] = set()
        if prepared is not None:
            left_out = prepared.stats[split].left_out
        tags = records.datasets.get(split) or [""] * len(items)
        rows = [
            {**record_to_json(r), **({"_dataset": tag} if tag else {})}
            for r, tag in zip(items, tags, strict=True)
            if r.source not in left_out
        ]
        tmp = out_dir / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(out_dir / f"{split}.jsonl")
        written[split] = len(rows)
    report = prepared.report if prepared is not None else records.report
    (out_dir / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return written
