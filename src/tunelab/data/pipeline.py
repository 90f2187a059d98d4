"""The data stage as two calls, each filling report.json as it goes.

`load_records`: files -> canonical records -> normalise -> PII -> dedup -> split -> leakage -> labels.
`tokenize_records`: records -> template -> tokens and loss masks -> length policy -> (packing).
Both run before the model is trained, so every data problem surfaces before any compute is spent.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DataConfig, Recipe
from tunelab.data import quality
from tunelab.data.clean import NearDupConfig
from tunelab.data.formats import RECORD_KIND, Columns, build_label_map, check_labels_known, load_split
from tunelab.data.packing import pack_examples
from tunelab.data.records import Chat, Labeled, Record
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import Example, LengthPolicy, TokenizeStats, tokenize_chats, tokenize_labeled
from tunelab.errors import DataError

SPLITS = ("train", "validation", "test")
RECORD_KIND_FOR_TASK = {"sft": "chat", "classify": "labeled"}
FORMATS_FOR_KIND = {
    "chat": "chat (messages), sharegpt (conversations), alpaca (instruction/output), prompt/completion",
    "labeled": "labeled text (text + label columns) or multiple choice (question/choices/answer)",
}


@dataclass
class Records:
    """Cleaned, split, leak-checked records per split, before any tokenizer is involved."""

    splits: dict[str, list[Any]]
    label_map: dict[str, int] | None = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedData:
    splits: dict[str, list[Example]]
    stats: dict[str, TokenizeStats]
    label_map: dict[str, int] | None = None
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)  # what was dropped or truncated, for the user
    report: dict[str, Any] = field(default_factory=dict)
    packed: bool = False  # train holds packed rows (several examples each), to be collated by collate_packed


def columns_of(data: DataConfig) -> Columns:
    return Columns(
        text=data.text_column, label=data.label_column, text_pair=data.text_pair_column, rename=data.columns
    )


def near_config(data: DataConfig) -> NearDupConfig:
    near = data.near_dedup
    return NearDupConfig(threshold=near.threshold, num_perm=near.num_perm, shingle_size=near.shingle_size)


LARGE_REMOVAL = 0.10  # warn when a cleaning step removes more than this share of train


def load_records(recipe: Recipe) -> Records:
    """Read, clean, split and leak-check every split named in the recipe."""
    data = recipe.data
    report: dict[str, Any] = {"splits": {}}
    splits = {split: _load(recipe, split, report) for split in SPLITS if getattr(data, split)}
    if data.sample is not None and len(splits["train"]) > data.sample:
        # Seeded, and in file order, so the same recipe always trains on the same rows.
        chosen = sorted(random.Random(recipe.train.seed).sample(range(len(splits["train"])), data.sample))
        report["sample"] = {"from": len(splits["train"]), "kept": data.sample, "seed": recipe.train.seed}
        splits["train"] = [splits["train"][i] for i in chosen]
    if data.normalize:
        report["normalize"] = {}
        for split in splits:
            splits[split], report["normalize"][split] = quality.normalize(splits[split])
    if data.pii != "off":
        report["pii"] = {}
        for split in splits:
            splits[split], report["pii"][split] = quality.apply_pii(splits[split], data.pii)
    near = near_config(data)
    if data.dedup or data.near_dedup.enabled:
        before = len(splits["train"])
        splits["train"], report["dedup"] = quality.dedup(
            splits["train"], exact=data.dedup, near=near if data.near_dedup.enabled else None
        )
        removed = before - len(splits["train"])
        if removed > LARGE_REMOVAL * before:
            report.setdefault("warnings", []).append(
                f"dedup removed {removed} of {before} training rows ({100 * removed / before:.0f}%): "
                "check report.json's examples; a dataset of sub-phrases (like SST-2) wants data.near_dedup off"
            )
    ratios = {s: getattr(data.split, s) for s in ("validation", "test") if s not in splits}
    if any(r > 0 for r in ratios.values()):
        held, report["split"] = quality.split_off(
            splits.pop("train"), ratios, seed=recipe.train.seed, stratify=recipe.task == "classify"
        )
        splits.update(held)
    splits["train"], report["leakage"] = _check_leakage(recipe, splits, near)
    label_map = _labels(recipe, splits, report) if recipe.task == "classify" else None
    report["records"] = {split: len(records) for split, records in splits.items()}
    for split, records in splits.items():
        if not records:
            raise DataError(f"{split}: no rows left after cleaning", fix="see the counts in report.json")
    return Records(splits=splits, label_map=label_map, report=report)


def _load(recipe: Recipe, split: str, report: dict[str, Any]) -> list[Record]:
    data = recipe.data
    wanted = RECORD_KIND_FOR_TASK[recipe.task]
    loaded = load_split(
        getattr(data, split),
        fmt=data.format,
        columns=columns_of(data),
        on_error=data.on_error,
        text_unit=data.text_unit,
        kind=wanted,
        hub_split=split,
    )
    if RECORD_KIND[loaded.format] != wanted:
        raise DataError(
            f"{loaded.path} looks like {loaded.format} data, but task {recipe.task} needs {FORMATS_FOR_KIND[wanted]}",
            fix="set data.format (and data.columns) if the detection is wrong, or change task",
        )
    report["splits"][split] = {
        "file": str(loaded.path),
        "format": loaded.format,
        "rows": loaded.total_rows,
        "bad_rows": len(loaded.bad_rows),
        "bad_examples": loaded.bad_rows[:20],
    }
    return list(loaded.records)


def _check_leakage(
    recipe: Recipe, splits: dict[str, list[Any]], near: NearDupConfig
) -> tuple[list[Any], dict]:
    held_out: dict[str, list[Any]] = {s: splits[s] for s in ("validation", "test") if s in splits}
    for path in recipe.data.contamination:
        # Contamination files (a benchmark, say) may be in any format and may hold bad rows: we only need text.
        held_out[f"contamination {path}"] = load_split(
            path, on_error="skip", text_unit=recipe.data.text_unit
        ).records
    if not held_out:
        return splits["train"], {"policy": recipe.data.leakage, "overlap": {}, "removed_from_train": 0}
    return quality.leakage(splits["train"], held_out, near=near, policy=recipe.data.leakage)


def _labels(recipe: Recipe, splits: dict[str, list[Any]], report: dict[str, Any]) -> dict[str, int]:
    label_map = build_label_map(splits["train"])
    if len(label_map) < 2:
        raise DataError(
            f"train: every row has the label {next(iter(label_map))!r}; a classifier needs two or more",
            fix="check data.label_column, or add examples of the other classes",
        )
    for split in ("validation", "test"):
        if split in splits:
            check_labels_known(splits[split], label_map, split)
    report["labels"] = quality.label_balance(splits["train"])
    if recipe.data.balance != "none":
        splits["train"], report["balance"] = quality.rebalance(
            splits["train"], recipe.data.balance, recipe.train.seed
        )
    return label_map


def tokenize_records(recipe: Recipe, records: Records, tokenizer: Any) -> PreparedData:
    data, max_len = recipe.data, recipe.train.max_seq_len
    policy = LengthPolicy(max_len, data.truncation, data.min_tokens, data.max_tokens)
    prepared = PreparedData(splits={}, stats={}, label_map=records.label_map, report=records.report)
    prepared.notes.extend(records.report.get("warnings", []))
    if recipe.task == "sft":
        prepared.chat_template = ensure_chat_template(tokenizer, data.template)
    for split, items in records.splits.items():
        if recipe.task == "sft":
            examples, stats = tokenize_chats(tokenizer, _all(items, Chat), policy)
        else:
            assert records.label_map is not None
            examples, stats = tokenize_labeled(tokenizer, _all(items, Labeled), records.label_map, policy)
        _preflight(split, max_len, examples, stats, prepared.notes)
        prepared.splits[split], prepared.stats[split] = examples, stats
    prepared.report["tokenize"] = {
        "template": prepared.chat_template,
        **{split: stats.as_report() for split, stats in prepared.stats.items()},
    }
    if recipe.train.packing and recipe.task == "sft":
        # Only train is packed: evaluation runs example by example, so its numbers never depend on packing.
        train = prepared.splits["train"]
        prepared.splits["train"], prepared.packed = pack_examples(train, max_len), True
        prepared.report["packing"] = {"examples": len(train), "rows": len(prepared.splits["train"])}
    return prepared


def _all(items: list[Any], kind: type) -> list[Any]:
    assert all(isinstance(item, kind) for item in items)
    return items


def _preflight(
    split: str, max_len: int, examples: list[Example], stats: TokenizeStats, notes: list[str]
) -> None:
    """Stop before training when nothing can be learned; say what was truncated or left out."""
    if stats.truncated:
        notes.append(f"{split}: {stats.truncated} of {stats.examples} examples truncated to {max_len} tokens")
    if stats.without_targets and not examples:
        raise DataError(
            f"{split}: no example keeps a single assistant token after rendering and truncation "
            f"to train.max_seq_len={max_len}, so there is nothing to learn",
            problems=[f"{source}: no assistant token left" for source in stats.without_targets[:5]],
            fix="raise train.max_seq_len, shorten the prompts, or check that the chat template renders "
            "assistant turns",
        )
    if not examples:
        raise DataError(
            f"{split}: every example was left out by the length filters", problems=[str(stats.as_report())]
        )
    for reason, sources in stats.dropped.items():
        notes.append(
            f"{split}: {len(sources)} of {stats.examples} examples left out ({reason}; first: {sources[0]})"
        )


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
    kept = ", ".join(f"{split} {n:,}" for split, n in report.get("records", {}).items())
    return f"data: {'; '.join(parts)} -> {kept}"


# ---------------------------------------------------------------------------------------------
# Writing what will be trained on


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
    return {**row, "_source": source}


def _message(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v is not None}


def write_prepared(out_dir: Path, records: Records, prepared: PreparedData | None) -> None:
    """The cleaned splits as canonical JSONL (only rows that survive tokenisation) and report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, items in records.splits.items():
        left_out: set[str] = set()
        if prepared is not None:
            left_out = {s for sources in prepared.stats[split].dropped.values() for s in sources}
        rows = [record_to_json(r) for r in items if r.source not in left_out]
        tmp = out_dir / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        tmp.replace(out_dir / f"{split}.jsonl")
    report = prepared.report if prepared is not None else records.report
    (out_dir / "report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
