"""Quality gates over canonical records: normalise, PII, dedup, split, leakage, balance.

Each step returns the records it keeps and a small dict for report.json saying what it did, with
counts and a few examples, so nothing is dropped silently. String-level work lives in clean.py.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tunelab.data.clean import (
    NearDupConfig,
    NearDuplicateIndex,
    dedup_key,
    exact_duplicates,
    mask_pii,
    near_duplicates,
    normalize_text,
)
from tunelab.data.records import Chat, Labeled, Message, Preference, Rated, Record, Tagged, Text, record_text
from tunelab.errors import DataError

EXAMPLES_SHOWN = 5
Step = dict[str, Any]


def map_text(record: Record, fn: Callable[[str], str]) -> Record:
    """Apply a string function to every text field of a record (labels are not text)."""
    if isinstance(record, Chat):
        return replace(record, messages=tuple(_map_message(m, fn) for m in record.messages))
    if isinstance(record, Labeled):
        pair = fn(record.text_pair) if record.text_pair is not None else None
        return replace(record, text=fn(record.text), text_pair=pair)
    if isinstance(record, Preference):
        prompt = tuple(Message(m.role, fn(m.content), m.weight) for m in record.prompt)
        return replace(record, prompt=prompt, chosen=fn(record.chosen), rejected=fn(record.rejected))
    if isinstance(record, Rated):
        prompt = tuple(Message(m.role, fn(m.content), m.weight) for m in record.prompt)
        return replace(record, prompt=prompt, completion=fn(record.completion))
    if isinstance(record, Tagged):  # word by word: the tags stay aligned with the words
        return replace(record, tokens=tuple(fn(token) or token for token in record.tokens))
    assert isinstance(record, Text)
    return replace(record, text=fn(record.text))


def _map_message(message: Message, fn: Callable[[str], str]) -> Message:
    """The content and the string values of the calls' arguments."""
    calls = tuple(replace(call, arguments=_map_arguments(call.arguments, fn)) for call in message.tool_calls)
    return replace(message, content=fn(message.content), tool_calls=calls)


def _map_arguments(arguments: str, fn: Callable[[str], str]) -> str:
    """`fn` over each value in a call's arguments (JSON text), so the result is still JSON: run over the
    text itself, a card-number pattern rewrites a bare number into an unquoted placeholder. A number that
    `fn` changes becomes the string it returns; keys are left alone. The file's own text is kept when
    nothing changed."""
    value = json.loads(arguments)
    mapped = _map_values(value, fn)
    return arguments if mapped == value else json.dumps(mapped, ensure_ascii=False)


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {key: _map_values(item, fn) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_values(item, fn) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):  # a card number written as a number
        text = json.dumps(value)
        mapped = fn(text)
        return value if mapped == text else mapped
    return value


def normalize(records: list[Record]) -> tuple[list[Record], Step]:
    out = [map_text(r, normalize_text) for r in records]
    changed = sum(a != b for a, b in zip(records, out, strict=True))
    return out, {"changed": changed}


def apply_pii(records: list[Record], policy: str) -> tuple[list[Record], Step]:
    """mask: replace with typed placeholders; drop: leave the row out; report: count only."""
    counts: Counter[str] = Counter()
    kept: list[Record] = []
    flagged: list[str] = []
    for record in records:
        found: Counter[str] = Counter()

        def mask(text: str, found: Counter[str] = found) -> str:
            masked, hits = mask_pii(text)
            found.update(hits)
            return masked

        masked = map_text(record, mask)
        counts.update(found)
        if found:
            flagged.append(record.source)
        if policy == "drop" and found:
            continue
        kept.append(masked if policy == "mask" else record)
    return kept, {
        "policy": policy,
        "hits": dict(sorted(counts.items())),
        "rows_with_pii": len(flagged),
        "rows_dropped": len(records) - len(kept),
        "examples": flagged[:EXAMPLES_SHOWN],
    }


def dedup(records: list[Record], *, exact: bool, near: NearDupConfig | None) -> tuple[list[Record], Step]:
    """Keep the first of every group of exact / near duplicates within one split."""
    texts = [record_text(r) for r in records]
    step: Step = {"exact_removed": 0, "near_removed": 0, "examples": []}
    duplicate_of: list[int | None] = [None] * len(records)
    if exact:
        duplicate_of = exact_duplicates(texts)
        step["exact_removed"] = sum(d is not None for d in duplicate_of)
    if near is not None:
        near_of = near_duplicates(texts, near)
        for i, first in enumerate(near_of):
            if duplicate_of[i] is None and first is not None:
                duplicate_of[i] = first
                step["near_removed"] += 1
    removed = [(i, d) for i, d in enumerate(duplicate_of) if d is not None]
    step["examples"] = [
        {"removed": records[i].source, "kept": records[d].source} for i, d in removed[:EXAMPLES_SHOWN]
    ]
    return [r for r, d in zip(records, duplicate_of, strict=True) if d is None], step


def leakage(
    train: list[Record],
    held_out: dict[str, list[Record]],
    *,
    near: NearDupConfig | None,
    policy: str,
) -> tuple[list[Record], Step]:
    """Train rows that (near-)duplicate any held-out row: removed from train (drop) or a failure (fail)."""
    # Every held-out row once, as (split name, record); both indexes point into this list by position.
    rows = [(name, record) for name, records in held_out.items() for record in records]
    exact_index: dict[str, int] = {}
    near_index = NearDuplicateIndex(near) if near is not None else None
    for position, (_, record) in enumerate(rows):
        text = record_text(record)
        exact_index.setdefault(dedup_key(text), position)
        if near_index is not None:
            near_index.add(str(position), text)
    per_split: dict[str, Counter[str]] = {name: Counter() for name in held_out}
    examples: list[dict[str, str]] = []
    kept: list[Record] = []
    for record in train:
        text = record_text(record)
        hit, kind = exact_index.get(dedup_key(text)), "exact"
        if hit is None and near_index is not None:
            matches = near_index.query(text)
            hit, kind = (min(int(m) for m in matches), "near") if matches else (None, kind)
        if hit is None:
            kept.append(record)
            continue
        name, overlapped = rows[hit]
        per_split[name][kind] += 1
        if len(examples) < EXAMPLES_SHOWN:
            examples.append({"train": record.source, "overlaps": overlapped.source, "kind": kind})
    overlap = {name: {"exact": c["exact"], "near": c["near"]} for name, c in per_split.items()}
    removed = len(train) - len(kept)
    step: Step = {"policy": policy, "overlap": overlap, "examples": examples, "removed_from_train": 0}
    if removed and policy == "fail":
        raise DataError(
            f"{removed} training row(s) overlap held-out data: {overlap}",
            problems=[f"{e['train']} {e['kind']}-duplicates {e['overlaps']}" for e in examples],
            fix="remove them from the training file, or set data.leakage: drop to leave them out",
        )
    step["removed_from_train"] = removed
    return kept, step


def split_off(
    records: list[Record], ratios: dict[str, float], *, seed: int, stratify: bool
) -> tuple[dict[str, list[Record]], Step]:
    """Hold out shares of train (stratified by label for classification), reproducibly from the seed."""
    from sklearn.model_selection import train_test_split  # well-tested stratified splitting

    out: dict[str, list[Record]] = {}
    rest = records
    total = len(records)
    for name, ratio in ratios.items():
        if ratio <= 0:
            continue
        size = max(1, round(ratio * total))
        labels = [r.label for r in rest] if stratify and isinstance(rest[0], Labeled) else None  # type: ignore[union-attr]
        try:
            rest, held = train_test_split(
                rest, test_size=size, random_state=seed, shuffle=True, stratify=labels
            )
        except ValueError as exc:
            raise DataError(
                f"cannot hold out {size} rows as {name}: {exc}", fix="lower data.split or add data"
            ) from None
        out[name] = list(held)
    out["train"] = list(rest)
    return out, {name: len(v) for name, v in out.items()}


def label_balance(records: list[Labeled]) -> Step:
    counts = Counter(r.label for r in records)
    most, least = max(counts.values()), min(counts.values())
    return {"counts": dict(sorted(counts.items())), "imbalance_ratio": round(most / least, 3)}


def rebalance(records: list[Labeled], mode: str, seed: int) -> tuple[list[Labeled], Step]:
    """oversample: repeat minority rows up to the majority count; undersample: cut to the minority count."""
    by_label: dict[str, list[Labeled]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    rng = random.Random(seed)
    target = (max if mode == "oversample" else min)(len(v) for v in by_label.values())
    out: list[Labeled] = []
    for label in sorted(by_label):
        group = by_label[label]
        if mode == "oversample":
            out += group + [rng.choice(group) for _ in range(target - len(group))]
        else:
            out += rng.sample(group, target)
    return out, {"mode": mode, "before": label_balance(records), "after": label_balance(out)}
