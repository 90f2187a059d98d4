"""`tunelab data inspect`: what is in a data file, before any recipe is written."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.data.clean import NearDupConfig, exact_duplicates, find_pii, near_duplicates
from tunelab.data.fields import Columns
from tunelab.data.formats import load_split
from tunelab.data.readers import read_file
from tunelab.data.records import Chat, Labeled, Rated, Text, record_text
from tunelab.data.templates import ensure_chat_template, render_chat
from tunelab.errors import DataError

SHOWN = 20


def inspect_file(
    path: str | Path,
    *,
    fmt: str = "auto",
    columns: Columns | None = None,
    tokenizer: Any = None,
    max_seq_len: int = 512,
    near: NearDupConfig | None = None,
    text_unit: str = "line",
) -> dict[str, Any]:
    columns = columns or Columns()
    try:
        split = load_split(path, fmt=fmt, columns=columns, on_error="skip", text_unit=text_unit)
        fmt_name, records, bad, total = split.format, split.records, split.bad_rows, split.total_rows
    except DataError as exc:
        conll = "looks like CoNLL" in exc.message
        if "cannot tell the data format" not in exc.message and not conll:
            raise
        # Unknown layout: still useful to see sizes, duplicates and PII over all of its text fields.
        read = read_file(path, text_unit=text_unit)
        fmt_name = (
            "CoNLL-like (one token and its tag per line), not plain text"
            if conll
            else f"unknown ({exc.message.split('(', 1)[1].rstrip(')')})"
        )
        records = [Text(_all_text(row.fields), source=f"{read.path}:{row.where}") for row in read.parsed]
        bad, total = read.unreadable, read.total
    texts = [record_text(r) for r in records]
    summary: dict[str, Any] = {
        "file": str(path),
        "format": fmt_name,
        "records": len(records),
        "rows": total,
        "bad_rows": len(bad),
        "bad_examples": bad[:SHOWN],
        "characters": length_stats([len(t) for t in texts]),
    }
    if tokenizer is not None:
        lengths = token_lengths(tokenizer, records)
        summary["tokens"] = length_stats(lengths)
        summary["tokens"]["over_max_seq_len"] = sum(n > max_seq_len for n in lengths)
        summary["tokens"]["max_seq_len"] = max_seq_len
    summary["exact_duplicates"] = sum(d is not None for d in exact_duplicates(texts))
    summary["near_duplicates"] = sum(d is not None for d in near_duplicates(texts, near or NearDupConfig()))
    summary["pii"] = dict(sorted(Counter(m.kind for t in texts for m in find_pii(t)).items()))
    # Classes, or KTO's desirable / undesirable answers (whose balance desirable_weight corrects).
    counts = Counter(r.label for r in records if isinstance(r, Labeled))
    counts.update("desirable" if r.label else "undesirable" for r in records if isinstance(r, Rated))
    if counts:
        summary["labels"] = {
            "counts": dict(sorted(counts.items())),
            "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 3),
        }
    return summary


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0, "median": 0, "p95": 0, "max": 0}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def token_lengths(tokenizer: Any, records: list[Any]) -> list[int]:
    """Token counts as training would see them: chats rendered with the template, pairs encoded together."""
    chats = [r for r in records if isinstance(r, Chat)]
    if chats:
        ensure_chat_template(tokenizer)
        texts = [render_chat(tokenizer, chat)[0] for chat in chats]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    labeled = [r for r in records if isinstance(r, Labeled)]
    if labeled and any(r.text_pair for r in labeled):
        return [len(tokenizer(r.text, r.text_pair)["input_ids"]) for r in labeled]
    return [len(ids) for ids in tokenizer([record_text(r) for r in records])["input_ids"]]


def _all_text(fields: dict[str, Any]) -> str:
    return "\n".join(str(v) for v in fields.values() if isinstance(v, str))


def render_summary(summary: dict[str, Any]) -> list[str]:
    """Plain lines for the terminal (JSON goes to --json)."""
    lines = [
        f"file: {summary['file']}",
        f"format: {summary['format']}",
        f"records: {summary['records']:,} of {summary['rows']:,} rows ({summary['bad_rows']} bad)",
    ]
    lines += [f"  {line}" for line in summary["bad_examples"][:5]]
    chars = summary["characters"]
    lines.append(
        f"characters: min {chars['min']}, median {chars['median']}, p95 {chars['p95']}, max {chars['max']}"
    )
    if "tokens" in summary:
        tok = summary["tokens"]
        lines.append(
            f"tokens: min {tok['min']}, median {tok['median']}, p95 {tok['p95']}, max {tok['max']}; "
            f"{tok['over_max_seq_len']} over max_seq_len={tok['max_seq_len']}"
        )
    lines.append(
        f"duplicates: {summary['exact_duplicates']} exact, {summary['near_duplicates']} near (incl. exact)"
    )
    pii = summary["pii"]
    lines.append("pii: " + (", ".join(f"{k} {v}" for k, v in pii.items()) if pii else "none found"))
    if "labels" in summary:
        labels = summary["labels"]
        counts = ", ".join(f"{k} {v}" for k, v in labels["counts"].items())
        lines.append(f"labels: {counts} (imbalance ratio {labels['imbalance_ratio']})")
    return lines
