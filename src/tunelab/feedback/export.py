"""`tunelab feedback export`: ratings as preference data (TRL, OpenAI DPO or KTO rows), through the
data stage's own gates.

From ratings to pairs, every rating lands in exactly one count:
- a pair's ratings are resolved by majority: the verdict with more votes than any other wins, its
  ratings are `used` and the others `overruled`; with no majority (one "a" against one "b") the
  pair is `conflicting` and left out: two people disagreeing is no preference to train on.
- a `tie` verdict has no preferred answer: left out in every format.
- a `both_bad` verdict: two negative rows in KTO (each answer is undesirable on its own); left out
  of TRL and OpenAI rows, which need one answer better than the other.
Then the pairs pass the gates `tunelab train` runs (data/quality.py, data/screen.py): exact
duplicates, pairs whose two answers are the same text (sampled answers can be; there is nothing to
prefer, and KTO would call one text both good and bad), leakage of prompts into `--held-out` prompts (drop or fail, as data.leakage), the
content screen, and a check that the chosen answer is not simply the longer one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.config import ContentScreen
from tunelab.data import quality
from tunelab.data.clean import NearDupConfig
from tunelab.data.records import Chat, Message, Preference, Record
from tunelab.data.screen import screen_split
from tunelab.errors import TunelabError
from tunelab.feedback.sample import read_prompts
from tunelab.feedback.store import FeedbackStore
from tunelab.files import write_text_atomic

FORMATS = ("trl", "openai", "kto")
SCREENS = ("report", "drop", "off")
# Park et al. 2024 ("Disentangling length from quality in DPO"): DPO readily learns "longer wins"
# when the chosen answer is usually the longer one; outside this band the set invites that shortcut.
LENGTH_BAND = (0.3, 0.7)


@dataclass(frozen=True)
class Decided:
    """One pair after its ratings were resolved: a winner (chosen) and loser, or both bad."""

    pair: Preference  # chosen/rejected = winner/loser; a/b when both are bad
    both_bad: bool


def resolve(labels: list[str]) -> str | None:
    """A pair's verdict from its ratings: the majority label, None when no label has a majority."""
    counts = Counter(labels).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def decide(ratings: list[dict[str, Any]], fmt: str) -> tuple[list[Decided], Counter[str]]:
    """The pairs to export and what became of every rating (used, overruled, tie, both_bad, conflicting)."""
    by_pair: dict[str, list[dict[str, Any]]] = {}
    for rating in ratings:
        by_pair.setdefault(rating["pair_id"], []).append(rating)
    fate: Counter[str] = Counter()
    decided: list[Decided] = []
    for pair_id, group in by_pair.items():
        labels = [r["choice"] for r in group]
        verdict = resolve(labels)
        if verdict is None:
            fate["conflicting"] += len(labels)
            continue
        agreeing = labels.count(verdict)
        fate["overruled"] += len(labels) - agreeing
        if verdict == "tie" or (verdict == "both_bad" and fmt != "kto"):
            fate[verdict] += agreeing
            continue
        fate["used"] += agreeing
        first = group[0]
        prompt = tuple(Message(m["role"], m["content"]) for m in first["prompt"])
        a, b = first["a"]["text"], first["b"]["text"]
        chosen, rejected = (b, a) if verdict == "b" else (a, b)
        pair = Preference(prompt=prompt, chosen=chosen, rejected=rejected, source=f"pair {pair_id}")
        decided.append(Decided(pair, verdict == "both_bad"))
    return decided, fate


def rows_for(item: Decided, fmt: str) -> list[dict[str, Any]]:
    """One pair as rows of the format: one row for trl/openai, two for kto."""
    prompt = [{"role": m.role, "content": m.content} for m in item.pair.prompt]
    chosen = [{"role": "assistant", "content": item.pair.chosen}]
    rejected = [{"role": "assistant", "content": item.pair.rejected}]
    if fmt == "trl":
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]
    if fmt == "openai":
        return [{"input": {"messages": prompt}, "preferred_output": chosen, "non_preferred_output": rejected}]
    return [
        {"prompt": prompt, "completion": chosen, "label": not item.both_bad},
        {"prompt": prompt, "completion": rejected, "label": False},
    ]


def length_balance(items: list[Decided]) -> tuple[dict[str, Any], str | None]:
    """How often the chosen answer is the longer one (characters), over pairs with a winner."""
    pairs = [d.pair for d in items if not d.both_bad]
    if not pairs:
        return {"pairs": 0, "chosen_longer_share": None}, None
    longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
    share = longer / len(pairs)
    step = {
        "pairs": len(pairs),
        "chosen_longer_share": round(share, 4),
        "mean_chosen_chars": round(sum(len(p.chosen) for p in pairs) / len(pairs), 1),
        "mean_rejected_chars": round(sum(len(p.rejected) for p in pairs) / len(pairs), 1),
    }
    low, high = LENGTH_BAND
    if low <= share <= high:
        return step, None
    side = "longer" if share > high else "shorter"
    return step, (
        f"length balance: the chosen answer is the {side} one in {max(share, 1 - share):.0%} of "
        f"{len(pairs)} pairs; DPO can learn answer length instead of quality (Park et al. 2024). "
        "Rate pairs of similar length, or balance the set before training"
    )


def _kept(items: list[Decided], records: list[Any]) -> list[Decided]:
    """The items whose record survived a gate (records carry the pair's name as their source)."""
    alive = {r.source for r in records}
    return [d for d in items if d.pair.source in alive]


def _leakage(items: list[Decided], held_out: Path, policy: str) -> tuple[list[Decided], dict[str, Any]]:
    """Pairs whose prompt (near-)duplicates a held-out prompt: dropped, or a failure, as data.leakage.
    Prompts are compared with prompts: the answers are not in the held-out file."""
    held: list[Record] = [
        Chat(messages=tuple(Message(m["role"], m["content"]) for m in p), source=f"{held_out}:{i + 1}")
        for i, p in enumerate(read_prompts(held_out))
    ]
    prompts: list[Record] = [Chat(messages=d.pair.prompt, source=d.pair.source) for d in items]
    kept, step = quality.leakage(prompts, {str(held_out): held}, near=NearDupConfig(), policy=policy)
    return _kept(items, kept), step


def gate(
    items: list[Decided],
    *,
    held_out: Path | None,
    leakage: str,
    screen: str,
    screen_threshold: float,
) -> tuple[list[Decided], dict[str, Any]]:
    """Identical answers, dedup, leakage, content screen and the length check; what each did goes
    into the report."""
    report: dict[str, Any] = {"dropped_pairs": {}, "warnings": []}
    same = {id(d) for d in items if not d.both_bad and d.pair.chosen.strip() == d.pair.rejected.strip()}
    items, report["dropped_pairs"]["identical"] = [d for d in items if id(d) not in same], len(same)
    kept, report["dedup"] = quality.dedup([d.pair for d in items], exact=True, near=None)
    items, report["dropped_pairs"]["duplicate"] = _kept(items, kept), len(items) - len(kept)
    if held_out is not None:
        before = len(items)
        items, report["leakage"] = _leakage(items, held_out, leakage)
        report["dropped_pairs"]["leakage"] = before - len(items)
    if screen != "off" and items:
        cfg = ContentScreen(action=screen, threshold=screen_threshold)
        records, report["content_screen"], warnings = screen_split([d.pair for d in items], cfg, "train")
        report["dropped_pairs"]["content_screen"] = len(items) - len(records)
        items = _kept(items, records)
        report["warnings"] += warnings
    report["length"], warning = length_balance(items)
    report["warnings"] += [warning] if warning else []
    return items, report


def export_feedback(
    database: Path,
    fmt: str,
    out: Path,
    *,
    held_out: Path | None = None,
    leakage: str = "drop",
    screen: str = "report",
    screen_threshold: float = 0.5,
) -> dict[str, Any]:
    """Write the store's ratings to `out` as `fmt` rows (all or nothing); returns the report."""
    _check_options(fmt, leakage, screen, screen_threshold)
    if not Path(database).is_file():
        raise TunelabError(
            f"{database}: no such database", fix="pass --db, the file `tunelab sample` wrote to"
        )
    ratings = FeedbackStore(database).ratings()
    decided, fate = decide(ratings, fmt)
    items, report = gate(
        decided, held_out=held_out, leakage=leakage, screen=screen, screen_threshold=screen_threshold
    )
    rows = [row for item in items for row in rows_for(item, fmt)]
    report = {
        "format": fmt,
        "output": str(out),
        "ratings": len(ratings),
        "ratings_by_fate": {fate_: n for fate_, n in sorted(fate.items()) if n},
        "pairs": len(items),
        "rows": len(rows),
        **report,
    }
    if not rows:
        raise TunelabError(
            f"nothing to export from {len(ratings)} rating(s); {out} was not written",
            problems=[f"{k}: {v}" for k, v in {**fate, **report["dropped_pairs"]}.items() if v],
            fix="rate more pairs (ties, conflicts and, outside kto, both-bad verdicts have no preferred answer)",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return report


def _check_options(fmt: str, leakage: str, screen: str, threshold: float) -> None:
    problems = []
    if fmt not in FORMATS:
        problems.append(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    if leakage not in ("drop", "fail"):
        problems.append(f"--leakage {leakage!r}: choose drop or fail")
    if screen not in SCREENS:
        problems.append(f"--screen {screen!r}: choose {', '.join(SCREENS)}")
    if not 0 <= threshold <= 1:
        problems.append(f"--screen-threshold {threshold}: a score from 0 to 1")
    if problems:
        raise TunelabError("bad export options", problems=problems)
