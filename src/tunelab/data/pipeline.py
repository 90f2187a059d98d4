"""The data stage as one call: recipe + tokenizer -> tokenised splits, with pre-flight checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.config import Recipe
from tunelab.data.formats import build_label_map, check_labels_known, load_chats, load_labeled
from tunelab.data.records import Chat, Labeled
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import Example, TokenizeStats, tokenize_chats, tokenize_labeled
from tunelab.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class Records:
    """Parsed, validated records per split, before any tokenizer is involved."""

    splits: dict[str, list[Any]]
    label_map: dict[str, int] | None = None


@dataclass
class PreparedData:
    splits: dict[str, list[Example]]
    stats: dict[str, TokenizeStats]
    label_map: dict[str, int] | None = None
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)  # what was dropped or truncated, for the user


def load_records(recipe: Recipe) -> Records:
    """Read every split named in the recipe. Runs before the model loads, so data errors come first."""
    paths = {split: getattr(recipe.data, split) for split in SPLITS if getattr(recipe.data, split)}
    if recipe.task == "sft":
        return Records(splits={split: load_chats(path) for split, path in paths.items()})
    data = recipe.data
    splits: dict[str, list[Any]] = {
        split: load_labeled(
            path,
            text_column=data.text_column,
            label_column=data.label_column,
            text_pair_column=data.text_pair_column,
        )
        for split, path in paths.items()
    }
    label_map = build_label_map(splits["train"])
    if len(label_map) < 2:
        raise DataError(
            f"{paths['train']}: every row has the label {next(iter(label_map))!r}; a classifier needs two or more",
            fix="check data.label_column, or add examples of the other classes",
        )
    for split in ("validation", "test"):
        if split in splits:
            check_labels_known(splits[split], label_map, paths[split])
    return Records(splits=splits, label_map=label_map)


def tokenize_records(recipe: Recipe, records: Records, tokenizer: Any) -> PreparedData:
    max_len = recipe.train.max_seq_len
    prepared = PreparedData(splits={}, stats={}, label_map=records.label_map)
    if recipe.task == "sft":
        prepared.chat_template = ensure_chat_template(tokenizer)
    for split, items in records.splits.items():
        if recipe.task == "sft":
            examples, stats = tokenize_chats(tokenizer, _as(items, Chat), max_len)
        else:
            assert records.label_map is not None
            examples, stats = tokenize_labeled(tokenizer, _as(items, Labeled), records.label_map, max_len)
        _preflight(split, recipe, examples, stats, prepared.notes)
        prepared.splits[split], prepared.stats[split] = examples, stats
    return prepared


def _as(items: list[Any], kind: type) -> list[Any]:
    assert all(isinstance(item, kind) for item in items)
    return items


def _preflight(
    split: str, recipe: Recipe, examples: list[Example], stats: TokenizeStats, notes: list[str]
) -> None:
    """Stop before training when nothing can be learned; say what was truncated or left out."""
    max_len = recipe.train.max_seq_len
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
    if stats.without_targets:
        notes.append(
            f"{split}: {len(stats.without_targets)} of {stats.examples} examples left out: no assistant token "
            f"after truncation to {max_len} tokens (first: {stats.without_targets[0]})"
        )
