"""The data stage's one-line account for the terminal (report.json has the details)."""

from __future__ import annotations

from typing import Any

from tunelab.data.screen import describe_screen


def describe(report: dict[str, Any]) -> str:
    """One line on what the data stage did, for the terminal; report.json has the details."""
    rows = sum(s["rows"] for s in report.get("splits", {}).values())
    bad = sum(s["bad_rows"] for s in report.get("splits", {}).values())
    parts = [f"{rows:,} rows read ({bad} bad)"]
    dedup = report.get("dedup")
    if dedup:
        parts.append(f"{dedup['exact_removed']} exact + {dedup['near_removed']} near duplicates removed")
    leakage = report.get("leakage", {})
    if leakage.get("overlap"):
        parts.append(f"{leakage['removed_from_train']} train rows overlapping held-out data removed")
    hits = sum(sum(split["hits"].values()) for split in report.get("pii", {}).values())
    if "pii" in report:
        parts.append(f"{hits} PII hits ({next(iter(report['pii'].values()))['policy']})")
    if report.get("content_screen"):
        parts.append(describe_screen(report["content_screen"]))
    kept = ", ".join(f"{split} {n:,}" for split, n in report.get("records", {}).items())
    return f"data: {'; '.join(parts)} -> {kept}"
