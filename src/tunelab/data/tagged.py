"""Token-tagged data for `task: token_classify` (NER and the like): converting and tokenising.

Two layouts give the same records (readers.py reads both into rows):
- CoNLL: one token per line with its tags in whitespace-separated columns (the tag column is
  `data.tag_column`, default the last), a blank line between sentences, `-DOCSTART-` lines skipped.
  CoNLL-2003's lines are `EU NNP B-NP B-ORG`; WNUT-17's are `@paul O`.
- JSONL (or any container) rows `{"tokens": [...], "tags": [...]}`.

Words become sub-word tokens, and only a word's first sub-token carries its tag; the others, and the
special tokens, get IGNORE_INDEX. That is the convention of the HF token-classification examples and
of seqeval-scored benchmarks: one prediction per word, read off its first piece.
"""

from __future__ import annotations

from typing import Any

from tunelab.data.records import Tagged
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    Example,
    LengthPolicy,
    TokenizeStats,
    length_verdict,
    require_fast,
)
from tunelab.errors import DataError

OUTSIDE = "O"  # the tag of a token outside every entity


# ---------------------------------------------------------------------------------------------
# Converting


def tagged_from_fields(tokens: Any, tags: Any) -> Tagged:
    """{tokens, tags} -> a record, or ValueError with the reason (the converter words it as a row error)."""
    if not isinstance(tokens, list) or not tokens:
        raise ValueError("tokens: expected a non-empty list of words")
    if not isinstance(tags, list) or len(tags) != len(tokens):
        given = len(tags) if isinstance(tags, list) else type(tags).__name__
        raise ValueError(f"tags: expected one tag per token ({len(tokens)}), got {given}")
    for i, (token, tag) in enumerate(zip(tokens, tags, strict=True)):
        if not isinstance(token, str) or not token.strip():
            raise ValueError(f"tokens[{i}]: expected a word, got {token!r}")
        if not isinstance(tag, (str, int)) or isinstance(tag, bool) or not str(tag).strip():
            raise ValueError(f"tags[{i}]: expected a tag (text, or an integer id), got {tag!r}")
    return Tagged(tokens=tuple(tokens), tags=tuple(str(tag).strip() for tag in tags))


def build_tag_map(records: list[Tagged]) -> dict[str, int]:
    """Tag name -> id: O first, then the others sorted (B-LOC, B-ORG, ..., I-PER)."""
    names = sorted({tag for record in records for tag in record.tags} - {OUTSIDE})
    return {name: i for i, name in enumerate([OUTSIDE, *names])}


def check_tags_known(records: list[Tagged], tag_map: dict[str, int], split: str) -> None:
    unknown = [(r, tag) for r in records for tag in r.tags if tag not in tag_map]
    if unknown:
        shown = sorted({tag for _, tag in unknown})
        raise DataError(
            f"{split}: {len(unknown)} token(s) have tags that no training sentence has: {', '.join(shown[:10])}",
            problems=[f"{r.source}: tag {tag!r}" for r, tag in unknown[:20]],
            fix=f"use only the training tags ({', '.join(tag_map)}), or add training sentences with them",
        )


def tag_map_of(splits: dict[str, list[Any]], report: dict[str, Any]) -> dict[str, int]:
    """token_classify: the tag map from train; a held-out tag train never shows is an error."""
    tag_map = build_tag_map(splits["train"])
    if len(tag_map) < 2:
        raise DataError("train: every token has the tag O; a tagger needs at least one other tag")
    for split in ("validation", "test"):
        if split in splits:
            check_tags_known(splits[split], tag_map, split)
    counts: dict[str, int] = {}
    for record in splits["train"]:
        for tag in record.tags:
            counts[tag] = counts.get(tag, 0) + 1
    report["tags"] = dict(sorted(counts.items()))
    return tag_map


# ---------------------------------------------------------------------------------------------
# Tokenising


def tokenize_tagged(
    tokenizer: Any, records: list[Tagged], tag_map: dict[str, int], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """Words -> sub-word ids, with each word's tag id on its first sub-token and IGNORE_INDEX on the
    rest. A sentence longer than max_seq_len is truncated, and its words past the cut are not scored."""
    require_fast(tokenizer, "to align words with their sub-tokens")
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in records:
        stats.examples += 1
        encoded = tokenizer(list(record.tokens), is_split_into_words=True)
        if (reason := length_verdict(len(encoded["input_ids"]), policy)) is not None:
            stats.drop(reason, record.source)
            continue
        if len(encoded["input_ids"]) > policy.max_seq_len:
            stats.truncated += 1
            encoded = tokenizer(
                list(record.tokens), is_split_into_words=True, truncation=True, max_length=policy.max_seq_len
            )
        labels = first_piece_labels(encoded.word_ids(), [tag_map[tag] for tag in record.tags])
        example: Example = {k: list(v) for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}
        example["labels"] = labels
        examples.append(example)
    return examples, stats


def first_piece_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per sub-token: the word's label on its first piece, IGNORE_INDEX on later pieces and on special
    tokens (word id None)."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else word_labels[word])
        previous = word
    return labels
