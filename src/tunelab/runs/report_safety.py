"""The report's privacy and safety parts: the epsilon spent, the canary audit, the content screen.
Kept apart from report.py (the page and its template) so each stays readable."""

from __future__ import annotations

from typing import Any

from tunelab.runs.summary import RunSummary

Rows = list[tuple[str, str]]


def fmt(value: Any, digits: int = 4) -> str:
    """A value as the report prints it: a dash for none, thousands separators, fixed decimals."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, dict):  # counts by kind, e.g. PII hits {"EMAIL": 3}
        return ", ".join(f"{k} {fmt(n)}" for k, n in value.items()) or "none"
    return str(value)


def by_split(table: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> list[list[str]]:
    return [[split, *(fmt(row.get(key)) for key in keys)] for split, row in table.items()]


def privacy_section(summary: RunSummary) -> Rows | None:
    """train.privacy: the epsilon spent (the accountant's, recomputed) beside the target."""
    dp = summary.privacy
    if not dp:
        return None
    return [
        ("epsilon spent / target", f"{fmt(dp['epsilon'], 3)} / {dp['target_epsilon']}"),
        ("delta", f"{dp['delta']:.3g}"),
        ("accountant", str(dp["accountant"])),
        ("noise multiplier", fmt(dp["noise_multiplier"], 4)),
        (
            "per-example clip norm",
            f"{fmt(dp['max_grad_norm'], 4)} ({dp.get('clipping', 'per-example')} clipping)",
        ),
        ("sampling rate (expected batch)", f"{fmt(dp['sample_rate'], 5)} ({dp['expected_batch']})"),
    ]


def bias_section(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """eval.bias: subgroups against labels in train; per-subgroup accuracy and AUCs held out."""
    bias = evaluation.get("bias")
    if not bias:
        return None
    data = [
        [g["subgroup"], fmt(g["rows"]), str(g.get("gap_label", "—")), fmt(g["largest_gap"], 3)]
        for g in bias["data"]["subgroups"]
        if g["rows"]
    ]
    model = bias.get("model") or {}
    keys = ("rows", "accuracy", "subgroup_auc", "bpsn_auc", "bnsp_auc")
    held = [
        [g["subgroup"], *(fmt(g.get(k), 3) for k in keys)] for g in model.get("subgroups", []) if g["rows"]
    ]
    overall = model.get("overall")
    if overall:
        held.insert(0, ["(all rows)", *(fmt(overall.get(k), 3) for k in keys)])
    warnings = [*bias["data"]["warnings"], *model.get("warnings", [])]
    return {"data": data, "model": held, "split": model.get("split"), "warnings": warnings}


def canaries_section(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """eval.canaries: mean exposure and secrets recited per repetition count (0: the controls)."""
    audit = evaluation.get("canaries")
    if not audit:
        return None
    rows = [
        [
            "never (control)" if n == "0" else f"{n}x",
            str(g["canaries"]),
            fmt(g["mean_exposure"], 2),
            str(g["extracted"]),
        ]
        for n, g in audit["by_repetitions"].items()
    ]
    return {"rows": rows, "candidates": audit["candidates"], "max": fmt(audit["max_exposure"], 2)}


SCREEN_ROWS_SHOWN = 20  # flagged rows shown per split; report.json lists them all


def screen_rows(screen: dict[str, Any]) -> dict[str, Any]:
    """data.content_screen: per split, the flagged count and share; the flagged rows by file:line."""
    if not screen:
        return {"screen": None, "screen_flagged": None}
    keys = ("scorer", "threshold", "action", "flagged", "flagged_share", "dropped")
    flagged = [
        [split, str(row["source"]), fmt(row["score"], 3), str(row["where"])]
        for split, step in screen.items()
        for row in step["flagged_rows"][:SCREEN_ROWS_SHOWN]
    ]
    return {"screen": by_split(screen, keys), "screen_flagged": flagged}
