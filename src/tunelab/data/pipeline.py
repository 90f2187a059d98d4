"""The data stage as two calls, each filling report.json as it goes.

`load_records`: files -> canonical records -> normalise -> PII -> dedup -> split -> leakage -> labels.
`tokenize_records`: records -> template -> tokens and loss masks -> length policy -> (packing).
Both run before the model is trained, so every data problem surfaces before any compute is spent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.config import DataConfig, Recipe, source_name
from tunelab.data import quality
from tunelab.data.augment import Paraphraser, augment_train
from tunelab.data.canaries import insert_canaries
from tunelab.data.clean import NearDupConfig
from tunelab.data.fields import Columns
from tunelab.data.formats import (
    FORMATS_FOR_KIND,
    RECORD_KIND,
    load_split,
)
from tunelab.data.labels import build_label_map, check_labels_known, missing_classes_warning
from tunelab.data.mixture import REPLAY
from tunelab.data.packing import pack_examples
from tunelab.data.records import Chat, Record
from tunelab.data.screen import screen_splits
from tunelab.data.templates import add_marker_tokens, ensure_chat_template, split_markers
from tunelab.data.tokenize import (
    Example,
    LengthPolicy,
    TokenizeStats,
)
from tunelab.errors import DataError
from tunelab.methods.registry import method_spec, methods_where
from tunelab.tasks.registry import task_spec, tasks_where

SPLITS = ("train", "validation", "test")


@dataclass
class Records:
    """Cleaned, split, leak-checked records per split, before any tokenizer is involved."""

    splits: dict[str, list[Any]]
    label_map: dict[str, int] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    # Multi-dataset runs: split -> the dataset name of each record ("" for the shared validation/test files).
    datasets: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class PreparedData:
    splits: dict[str, list[Example]]
    stats: dict[str, TokenizeStats]
    label_map: dict[str, int] | None = None
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)  # what was dropped or truncated, for the user
    report: dict[str, Any] = field(default_factory=dict)
    packed: bool = False  # train holds packed rows (several examples each), to be collated by collate_packed
    added_tokens: list[str] = field(default_factory=list)  # template markers added to the tokenizer
    tools: bool = False  # the chats call functions: rendered with a template that writes tools


def columns_of(data: DataConfig) -> Columns:
    return Columns(
        text=data.text_column,
        label=data.label_column,
        text_pair=data.text_pair_column,
        rename=data.columns,
        prompt_template=data.prompt_template,
        system_prompt=data.system_prompt,
    )


def near_config(data: DataConfig) -> NearDupConfig:
    near = data.near_dedup
    return NearDupConfig(threshold=near.threshold, num_perm=near.num_perm, shingle_size=near.shingle_size)


LARGE_REMOVAL = 0.10  # warn when a cleaning step removes more than this share of train


@dataclass(frozen=True)
class DataStage:
    """What reading and cleaning need from a recipe: its data section, its task (the record kind)
    and the seed that samples, splits and balances. The functions below take this, not the recipe."""

    data: DataConfig
    task: str
    seed: int

    @classmethod
    def of(cls, recipe: Recipe) -> DataStage:
        return cls(recipe.data, recipe.task, recipe.train.seed)


def load_records(recipe: Recipe, *, paraphraser: Paraphraser | None = None) -> Records:
    """Read, clean, split and leak-check every split named in the recipe. `paraphraser` runs
    data.augment.model's local model (tunelab.paraphrase.paraphraser_for builds it)."""
    stage = DataStage.of(recipe)
    if stage.data.multi_source:
        return _load_mixture(stage)
    data = stage.data
    report: dict[str, Any] = {"splits": {}}
    files = {split: getattr(data, split) for split in SPLITS if getattr(data, split)}
    shares = {s: getattr(data.split, s) for s in ("validation", "test")}
    task = task_spec(recipe.task)
    kinds = task.kinds(recipe.preference.objective)
    splits = _prepare_source(stage, files, data.format, kinds, report, shares, stratify=task.classes)
    splits["train"], report["leakage"] = _check_leakage(data, splits)
    _check_not_empty(splits, report)  # before labels are counted: an empty train has none
    label_map = task.label_map(stage, splits, report) if task.label_map is not None else None
    if stage.data.augment is not None:  # after the split and the balancing: train rows only (classes)
        near = near_config(stage.data)
        splits["train"], report["augment"] = augment_train(
            splits, stage.data.augment, near, stage.seed, paraphraser
        )
    if recipe.eval.canaries is not None:  # after every cleaning step: their copies are deliberate
        splits["train"], report["canaries"] = insert_canaries(
            splits["train"], recipe.eval.canaries, stage.task
        )
    report["records"] = {split: len(records) for split, records in splits.items()}
    return Records(splits=splits, label_map=label_map, report=report)


def _prepare_source(
    stage: DataStage,
    files: dict[str, str],
    fmt: str,
    kinds: tuple[str, ...],
    report: dict[str, Any],
    shares: dict[str, float],
    stratify: bool = False,
) -> dict[str, list[Record]]:
    """One dataset's files, each split read, labels named, train sampled, all cleaned, and the
    held-out `shares` it has no file for split off its train rows. Counts go into `report`."""
    splits = {split: _load(stage, path, fmt, split, report["splits"], kinds) for split, path in files.items()}
    if stage.data.label_names:
        names = stage.data.label_names
        splits = {split: name_labels(records, names, split) for split, records in splits.items()}
    if "train" in splits:
        splits["train"] = _sample(stage.data.sample, stage.seed, splits["train"], report)
    _clean(stage.data, splits, report)
    ratios = {s: r for s, r in shares.items() if s not in splits and r > 0}
    if ratios and "train" in splits:
        held, report["split"] = quality.split_off(
            splits.pop("train"), ratios, seed=stage.seed, stratify=stratify
        )
        splits.update(held)
    if stage.data.content_screen is not None:  # after the split: held-out rows are reported, not dropped
        screen_splits(stage.data.content_screen, splits, report)
    return splits


def _load_mixture(stage: DataStage) -> Records:
    """Several training datasets (and replay data): each is read, cleaned and split on its own, then
    train rows are leak-checked against every held-out row and all splits are concatenated, tagged."""
    data = stage.data
    report: dict[str, Any] = {"splits": {}, "sources": {}}
    parts: dict[str, dict[str, list[Record]]] = {}
    kind = task_spec(stage.task).record_kinds
    # A dataset without its own held-out file gives data.split's share, unless a shared file covers it.
    shares = {s: getattr(data.split, s) for s in ("validation", "test") if not getattr(data, s)}
    sub: dict[str, Any]
    for source in data.sources:
        files = {
            "train": source.path,
            **{s: getattr(source, s) for s in ("validation", "test") if getattr(source, s)},
        }
        name, sub = source_name(source), {"splits": {}}
        parts[name] = _prepare_source(stage, files, source.format or data.format, kind, sub, shares)
        report["sources"][name] = sub
    if data.replay is not None:
        sub = {"splits": {}}
        files = {"train": data.replay.path}
        parts[REPLAY] = _prepare_source(
            stage, files, data.replay.format or "auto", task_spec(stage.task).replay_kinds, sub, {}
        )
        report["sources"][REPLAY] = sub
    shared = {split: getattr(data, split) for split in ("validation", "test") if getattr(data, split)}
    if shared:
        parts[""] = _prepare_source(stage, shared, data.format, kind, report, {})
    splits, datasets = _concatenated(parts)
    splits["train"], report["leakage"] = _check_leakage(data, splits)
    kept = {id(record) for record in splits["train"]}
    datasets["train"] = [name for name, part in parts.items() for r in part.get("train", []) if id(r) in kept]
    report["records"] = {split: len(records) for split, records in splits.items()}
    report["records_per_dataset"] = {
        split: {name: names.count(name) for name in dict.fromkeys(names)} for split, names in datasets.items()
    }
    _check_not_empty(splits, report)
    for name in parts:
        if name and name not in datasets["train"]:
            raise DataError(f"dataset {name}: no training rows left after cleaning", fix="see report.json")
    return Records(splits=splits, report=report, datasets=datasets)


def _concatenated(
    parts: dict[str, dict[str, list[Record]]],
) -> tuple[dict[str, list[Record]], dict[str, list[str]]]:
    """Every dataset's splits joined, with each row's dataset name beside it."""
    splits: dict[str, list[Record]] = {}
    datasets: dict[str, list[str]] = {}
    for name, part in parts.items():
        for split, records in part.items():
            splits.setdefault(split, []).extend(records)
            datasets.setdefault(split, []).extend([name] * len(records))
    return splits, datasets


def _sample(sample: int | None, seed: int, train: list[Record], report: dict[str, Any]) -> list[Record]:
    if sample is None or len(train) <= sample:
        return train
    # Seeded, and in file order, so the same recipe always trains on the same rows.
    chosen = sorted(random.Random(seed).sample(range(len(train)), sample))
    report["sample"] = {"from": len(train), "kept": sample, "seed": seed}
    return [train[i] for i in chosen]


def _clean(data: DataConfig, splits: dict[str, list[Record]], report: dict[str, Any]) -> None:
    """Normalise and PII-handle every split; remove duplicates from train. Counts go into `report`."""
    if data.normalize:
        report["normalize"] = {}
        for split in splits:
            splits[split], report["normalize"][split] = quality.normalize(splits[split])
    if data.pii != "off":
        report["pii"] = {}
        for split in splits:
            splits[split], report["pii"][split] = quality.apply_pii(splits[split], data.pii)
    if "train" not in splits or not (data.dedup or data.near_dedup.enabled):
        return
    before = len(splits["train"])
    splits["train"], report["dedup"] = quality.dedup(
        splits["train"], exact=data.dedup, near=near_config(data) if data.near_dedup.enabled else None
    )
    removed = before - len(splits["train"])
    if removed > LARGE_REMOVAL * before:
        report.setdefault("warnings", []).append(
            f"dedup removed {removed} of {before} training rows ({100 * removed / before:.0f}%): "
            "check report.json's examples; a dataset of sub-phrases (like SST-2) wants data.near_dedup off"
        )


def name_labels(records: list[Any], names: dict[str, str], split: str) -> list[Any]:
    """Each label as written in the data, replaced by its name from data.label_names. A label the
    mapping does not name is an error, not passed through: it would become a class of its own."""
    unnamed = sorted({r.label for r in records if r.label not in names})
    if unnamed:
        raise DataError(
            f"{split}: label(s) {', '.join(map(repr, unnamed[:5]))} have no name in data.label_names "
            f"(it names {', '.join(map(repr, names))})",
            fix="add them to data.label_names, or check data.label_column",
        )
    return [replace(r, label=names[r.label]) for r in records]


def _check_not_empty(splits: dict[str, list[Record]], report: dict[str, Any]) -> None:
    for split, records in splits.items():
        if records:
            continue
        removed = report.get("leakage", {}).get("removed_from_train", 0) if split == "train" else 0
        if removed:
            examples = report["leakage"].get("examples", [])[:3]
            raise DataError(
                f"train: no rows left: the leakage check removed all {removed} remaining row(s), each an "
                "exact or near duplicate of a validation, test or data.contamination row",
                problems=[f"{e['train']} {e['kind']}-duplicates {e['overlaps']}" for e in examples],
                fix="hold out rows that are not copies of the training rows (or leave data.validation "
                "unset and let data.split hold some out); if the near matches are too loose, raise "
                "data.near_dedup.threshold",
            )
        raise DataError(f"{split}: no rows left after cleaning", fix="see the counts in report.json")


def _load(
    stage: DataStage, path: str, fmt: str, split: str, report: dict[str, Any], kinds: tuple[str, ...]
) -> list[Record]:
    """One split's file as records, checked to be of a kind the task can train on; counts go to
    report[split]."""
    data = stage.data
    loaded = load_split(
        path,
        fmt=fmt,
        columns=columns_of(data),
        on_error=data.on_error,
        text_unit=data.text_unit,
        tag_column=data.tag_column,
        kind=kinds[0] if len(kinds) == 1 else None,
        hub_split=split,
    )
    if RECORD_KIND[loaded.format] not in kinds:
        wanted = " or ".join(FORMATS_FOR_KIND[k] for k in kinds)
        raise DataError(
            f"{loaded.path} looks like {loaded.format} data, but task {stage.task} needs {wanted}",
            fix="set data.format (and data.columns) if the detection is wrong, or change task",
        )
    report[split] = {
        "file": str(loaded.path),
        "format": loaded.format,
        "rows": loaded.total_rows,
        "bad_rows": len(loaded.bad_rows),
        "bad_examples": loaded.bad_rows[:20],
    }
    return list(loaded.records)


def _check_leakage(data: DataConfig, splits: dict[str, list[Any]]) -> tuple[list[Any], dict]:
    held_out: dict[str, list[Any]] = {s: splits[s] for s in ("validation", "test") if s in splits}
    for path in data.contamination:
        # Contamination files (a benchmark, say) may be in any format and may hold bad rows: we only need text.
        held_out[f"contamination {path}"] = load_split(
            path, on_error="skip", text_unit=data.text_unit
        ).records
    if not held_out:
        return splits["train"], {"policy": data.leakage, "overlap": {}, "removed_from_train": 0}
    return quality.leakage(splits["train"], held_out, near=near_config(data), policy=data.leakage)


def class_label_map(stage: DataStage, splits: dict[str, list[Any]], report: dict[str, Any]) -> dict[str, int]:
    """classify: the label map train defines; held-out labels checked against it, balance reported."""
    label_map = build_label_map(splits["train"])
    if len(label_map) < 2:
        raise DataError(
            f"train: every row has the label {next(iter(label_map))!r}; a classifier needs two or more",
            fix="check data.label_column, or add examples of the other classes",
        )
    for split in ("validation", "test"):
        if split in splits:
            check_labels_known(splits[split], label_map, split)
            warning = missing_classes_warning(splits[split], label_map, split)
            if warning:
                report.setdefault("warnings", []).append(warning)
    report["labels"] = quality.label_balance(splits["train"])
    if stage.data.balance != "none":
        splits["train"], report["balance"] = quality.rebalance(
            splits["train"], stage.data.balance, stage.seed
        )
    return label_map


def prepare_chat_tokenizer(
    template_name: str, method: str, tokenizer: Any, *, tools: bool = False
) -> tuple[str, list[str]]:
    """Give the tokenizer the chat template it renders with, and the template's turn markers as special
    tokens where it has none: (template name, markers added).

    Cut into word pieces ("< | im _ end | >") the markers would be learned as text: generation would
    never stop at a turn's end and the marker would leak into answers. Added as tokens, they need
    trainable embedding rows, which only some methods have (the registry's trains_new_tokens); with the others
    the recipe is refused. Runs on a data-cache hit too, so the cached ids stay valid. `tools`: the data
    calls functions, so the template must render them (templates.ensure_chat_template).
    """
    template = ensure_chat_template(tokenizer, template_name, tools=tools)
    split = split_markers(tokenizer, template)
    if split and not method_spec(method).trains_new_tokens:
        raise DataError(
            f"the tokenizer has no token for {', '.join(split)}, which the {template} chat template "
            f"writes around turns; they would have to be added as new tokens, and method "
            f"{method} cannot train new tokens' embeddings",
            fix=f"set data.template: alpaca (plain-text headers; answers end with the tokenizer's EOS "
            f"token), use method {' or '.join(methods_where('trains_new_tokens'))}, or a model whose tokenizer has a chat "
            "template (an instruct model)",
        )
    return template, add_marker_tokens(tokenizer, template)


def _uses_tools(records: Records, task: str) -> bool:
    """Whether any chat calls functions; refused for a task that does not train on calls."""
    uses = any(isinstance(r, Chat) and r.uses_tools for rows in records.splits.values() for r in rows)
    if uses and not task_spec(task).tool_calls:
        callers = ", ".join(tasks_where(lambda spec: spec.tool_calls))
        raise DataError(
            f"the data calls functions (tools, tool_calls), which task {task} does not train on",
            fix=f"train function calling with task: {callers}",
        )
    return uses


def _added_tokens_note(template: str, added: list[str], tokenizer: Any) -> str:
    return (
        f"chat template {template}: the tokenizer had no token for {', '.join(added)}; added as special "
        f"tokens (vocabulary now {len(tokenizer)}), the model's embeddings are resized to match, and the "
        "new rows are trained"
    )


def tokenize_records(recipe: Recipe, records: Records, tokenizer: Any) -> PreparedData:
    data, max_len = recipe.data, recipe.train.max_seq_len
    policy = LengthPolicy(max_len, data.truncation, data.min_tokens, data.max_tokens, data.truncation_side)
    prepared = PreparedData(splits={}, stats={}, label_map=records.label_map, report=records.report)
    prepared.notes.extend(records.report.get("warnings", []))
    task = task_spec(recipe.task)
    prepared.tools = _uses_tools(records, recipe.task)
    if task.chat_template:
        prepared.chat_template, prepared.added_tokens = prepare_chat_tokenizer(
            data.template, recipe.method.name, tokenizer, tools=prepared.tools
        )
        if prepared.added_tokens:
            prepared.notes.append(
                _added_tokens_note(prepared.chat_template, prepared.added_tokens, tokenizer)
            )
    for split, items in records.splits.items():
        examples, stats = [], TokenizeStats()
        for name, group in _groups(items, records.datasets.get(split)):
            # One group is one dataset's records of one kind (chats, and replay text, in an sft mixture).
            group_examples, group_stats = task.tokenize(tokenizer, group, records.label_map, policy, recipe)
            if name:
                for example in group_examples:
                    example["dataset"] = name
            examples.extend(group_examples)
            stats.add(group_stats)
        _preflight(split, max_len, examples, stats, prepared.notes)
        prepared.splits[split], prepared.stats[split] = examples, stats
    prepared.report["tokenize"] = {
        "template": prepared.chat_template,
        **{split: stats.as_report() for split, stats in prepared.stats.items()},
    }
    if recipe.packing:
        # Only train is packed: evaluation runs example by example, so its numbers never depend on packing.
        # Each dataset is packed on its own, so a packed row still belongs to one dataset for mixing.
        train = prepared.splits["train"]
        rows: list[Example] = []
        for name, group in _groups(train, [str(e.get("dataset", "")) for e in train]):
            packed = pack_examples(group, max_len)
            rows.extend({**row, "dataset": name} if name else row for row in packed)
        prepared.splits["train"], prepared.packed = rows, True
        prepared.report["packing"] = {"examples": len(train), "rows": len(rows)}
    return prepared


def _groups(items: list[Any], tags: list[str] | None) -> list[tuple[str, list[Any]]]:
    """Consecutive runs of items of one dataset and one record type, with the dataset's name."""
    groups: list[tuple[str, list[Any]]] = []
    for i, item in enumerate(items):
        key = (tags[i] if tags else "", type(item))
        if groups and (groups[-1][0], type(groups[-1][1][0])) == key:
            groups[-1][1].append(item)
        else:
            groups.append((key[0], [item]))
    return groups


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
            problems=[f"{source}: no target token left" for source in stats.without_targets[:5]],
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
