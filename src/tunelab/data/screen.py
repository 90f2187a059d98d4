"""The content screen (`data.content_screen`): every text of every row scored for offensive content,
each flagged row named by `file:line`, its score and where in the row.

OpenAI's moderation blocks a whole training file and never says which rows; this screen says which,
so a user can fix or drop exactly those. The scorers are pluggable (`register_scorer`):

- `profanity` (default, offline): alt-profanity-check, a linear model over word n-grams inside its
  wheel (MIT). It knows offensive words, not intent: a calm insult scores low, a quoted swear high.
- `detoxify`: the Detoxify models, if the user has the package (not a tunelab dependency).
- `openai`: any OpenAI-compatible `/moderations` endpoint; a row's score is its highest category score.

Preference pairs are scored per answer. A set whose chosen answers are flagged where their rejected
ones are not, more often than the other way round, teaches the model toward the flagged content: that
is an error (a warning with `action: report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.data.endpoint import post_json
from tunelab.data.records import Chat, Labeled, Preference, Rated, Record, Tagged, Text
from tunelab.errors import DataError

if TYPE_CHECKING:
    from tunelab.config.safety import ContentScreen

Scorer = Callable[[list[str], "ContentScreen"], list[float]]  # texts -> a score in [0, 1] each
SCORERS: dict[str, Scorer] = {}
ROWS_LISTED = 1000  # report.json lists this many flagged rows per split at most (the count is exact)


def register_scorer(name: str, scorer: Scorer) -> None:
    SCORERS[name] = scorer


def _profanity(texts: list[str], cfg: ContentScreen) -> list[float]:
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(texts)] if texts else []


def _detoxify(texts: list[str], cfg: ContentScreen) -> list[float]:
    try:
        from detoxify import Detoxify
    except ImportError:
        raise DataError(
            "data.content_screen.scorer: detoxify needs the detoxify package, which is not installed",
            fix="pip install detoxify (it downloads its model once), or use scorer: profanity",
        ) from None
    scores = Detoxify("original").predict(texts)
    return [float(s) for s in scores["toxicity"]]


def _openai(texts: list[str], cfg: ContentScreen) -> list[float]:
    """POST {endpoint}/moderations, 32 texts a request; a text's score is its highest category's."""
    endpoint = cfg.endpoint or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    scores: list[float] = []
    for start in range(0, len(texts), 32):
        answer = post_json(
            endpoint,
            "moderations",
            {"model": cfg.model, "input": texts[start : start + 32]},
            setting="data.content_screen",
            fix="check data.content_screen.endpoint and OPENAI_API_KEY, or use scorer: profanity",
            timeout=60,
            what="the moderation endpoint",
        )
        scores += [max(r["category_scores"].values(), default=0.0) for r in answer["results"]]
    return scores


register_scorer("profanity", _profanity)
register_scorer("detoxify", _detoxify)
register_scorer("openai", _openai)


def row_texts(record: Record) -> list[tuple[str, str]]:
    """A record's texts as (where, text): each chat turn, each answer of a pair, the text of a row."""
    if isinstance(record, Chat):
        turns = [(f"turn {i + 1} ({m.role})", m.content) for i, m in enumerate(record.messages)]
        calls = [
            (f"turn {i + 1} (call {call.name})", call.arguments)
            for i, m in enumerate(record.messages)
            for call in m.tool_calls
        ]
        return turns + calls
    if isinstance(record, Preference):
        prompt = [(f"prompt turn {i + 1} ({m.role})", m.content) for i, m in enumerate(record.prompt)]
        return [*prompt, ("chosen", record.chosen), ("rejected", record.rejected)]
    if isinstance(record, Rated):
        prompt = [(f"prompt turn {i + 1} ({m.role})", m.content) for i, m in enumerate(record.prompt)]
        return [*prompt, ("completion", record.completion)]
    if isinstance(record, Labeled):
        return [("text", record.text)] + ([("text_pair", record.text_pair)] if record.text_pair else [])
    if isinstance(record, Tagged):
        return [("tokens", " ".join(record.tokens))]
    assert isinstance(record, Text)
    return [("text", record.text)]


@dataclass
class Screened:
    """One split's scores: the highest per row, where in the row it is, and every part's score."""

    scores: list[float]
    where: list[str]
    parts: list[dict[str, float]]


def score_records(records: list[Record], cfg: ContentScreen) -> Screened:
    """Every text of every row scored in one batch (the scorers are much faster batched)."""
    texts = [row_texts(r) for r in records]
    flat = SCORERS[cfg.scorer]([text for row in texts for _, text in row], cfg)
    scores, where, parts, i = [], [], [], 0
    for row in texts:
        part = {name: flat[i + j] for j, (name, _) in enumerate(row)}
        i += len(row)
        top = max(part, key=lambda name: part[name]) if part else ""
        scores.append(part.get(top, 0.0))
        where.append(top)
        parts.append(part)
    return Screened(scores, where, parts)


def screen_splits(cfg: ContentScreen, splits: dict[str, list[Record]], report: dict[str, Any]) -> None:
    """Each split screened in place; its step in report["content_screen"], warnings in report["warnings"]."""
    report["content_screen"] = {}
    for split in splits:
        splits[split], report["content_screen"][split], warnings = screen_split(splits[split], cfg, split)
        report.setdefault("warnings", []).extend(warnings)


def describe_screen(steps: dict[str, dict[str, Any]]) -> str:
    flagged = ", ".join(f"{split} {step['flagged']}" for split, step in steps.items())
    dropped = sum(step["dropped"] for step in steps.values())
    return f"content screen flagged {flagged} ({dropped} dropped; rows named in report.json)"


def screen_split(
    records: list[Record], cfg: ContentScreen, split: str
) -> tuple[list[Record], dict[str, Any], list[str]]:
    """Score a split; drop its flagged rows when it is train and the action is drop; fail when train's
    flagged share is over the limit under `fail`. Returns (rows kept, report step, warnings)."""
    screened = score_records(records, cfg)
    flagged = [i for i, score in enumerate(screened.scores) if score >= cfg.threshold]
    share = len(flagged) / len(records) if records else 0.0
    listed = [
        {"source": records[i].source, "score": round(screened.scores[i], 4), "where": screened.where[i]}
        for i in flagged
    ]
    step: dict[str, Any] = {
        "scorer": cfg.scorer,
        "threshold": cfg.threshold,
        "action": cfg.action,
        "rows": len(records),
        "flagged": len(flagged),
        "flagged_share": round(share, 6),
        "flagged_rows": listed[:ROWS_LISTED],
        "dropped": 0,
    }
    warnings: list[str] = []
    if records and isinstance(records[0], Preference):
        step["pairs"], warning = _pair_balance(records, screened, cfg)
        warnings += [warning] if warning else []
    if any(isinstance(r, Rated) for r in records):
        step["rated"], warning = _rated_balance(records, screened, cfg)
        warnings += [warning] if warning else []
    if split != "train":
        return records, step, warnings
    if share > cfg.max_flagged_share:
        message = (
            f"content screen: {len(flagged)} of {len(records)} train rows ({100 * share:.1f}%) score "
            f">= {cfg.threshold} with {cfg.scorer}, over max_flagged_share {cfg.max_flagged_share}"
        )
        if cfg.action == "fail":
            raise DataError(
                message,
                problems=[f"{r['source']}: {r['score']:.3f} ({r['where']})" for r in listed[:20]],
                fix="fix or remove those rows (report.json lists them all), or set "
                "data.content_screen.action: drop",
            )
        warnings.append(message)
    if cfg.action == "drop" and flagged:
        dropped = set(flagged)
        records = [r for i, r in enumerate(records) if i not in dropped]
        step["dropped"] = len(dropped)
    return records, step, warnings


def _pair_balance(
    records: list[Record], screened: Screened, cfg: ContentScreen
) -> tuple[dict[str, Any], str | None]:
    """Flagged chosen answers against flagged rejected ones. More pairs whose chosen answer alone is
    flagged than pairs whose rejected answer alone is means the set prefers flagged answers."""
    chosen = [p["chosen"] >= cfg.threshold for p in screened.parts]
    rejected = [p["rejected"] >= cfg.threshold for p in screened.parts]
    only_chosen = [
        records[i].source for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)) if c and not r
    ]
    only_rejected = sum(1 for c, r in zip(chosen, rejected, strict=True) if r and not c)
    n = len(records)
    pairs = {
        "chosen_flagged_rate": round(sum(chosen) / n, 6),
        "rejected_flagged_rate": round(sum(rejected) / n, 6),
        "only_chosen_flagged": len(only_chosen),
        "only_rejected_flagged": only_rejected,
    }
    if len(only_chosen) <= only_rejected:
        return pairs, None
    message = (
        f"content screen: in {len(only_chosen)} pairs only the chosen answer is flagged, against "
        f"{only_rejected} where only the rejected one is: this preference set teaches toward flagged content"
    )
    if cfg.action != "report":
        raise DataError(
            message, problems=only_chosen[:20], fix="fix those pairs (chosen and rejected swapped?)"
        )
    return pairs, message


def _rated_balance(
    records: list[Record], screened: Screened, cfg: ContentScreen
) -> tuple[dict[str, Any], str | None]:
    """KTO's rows, unpaired: a flagged completion labelled desirable is taught, one labelled undesirable
    is taught against. A larger flagged share among desirable completions than among undesirable ones
    teaches toward flagged content, as a set preferring flagged answers does."""
    rows = [(i, r.label) for i, r in enumerate(records) if isinstance(r, Rated)]
    flagged = {i for i, _ in rows if screened.parts[i]["completion"] >= cfg.threshold}
    desirable = [i for i, label in rows if label]
    undesirable = [i for i, label in rows if not label]
    flagged_desirable = [records[i].source for i in desirable if i in flagged]
    rates = [
        sum(i in flagged for i in side) / len(side) if side else 0.0 for side in (desirable, undesirable)
    ]
    rated = {"desirable_flagged_rate": round(rates[0], 6), "undesirable_flagged_rate": round(rates[1], 6)}
    if rates[0] <= rates[1]:
        return rated, None
    message = (
        f"content screen: {100 * rates[0]:.1f}% of desirable completions are flagged, against "
        f"{100 * rates[1]:.1f}% of undesirable ones: this KTO set teaches toward flagged content"
    )
    if cfg.action != "report":
        raise DataError(message, problems=flagged_desirable[:20], fix="fix those rows (labels swapped?)")
    return rated, message
