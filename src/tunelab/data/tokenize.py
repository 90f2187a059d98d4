"""Records -> token ids (+ loss mask) -> padded batches."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.data.records import Chat, Labeled, Text
from tunelab.data.templates import Span, render_chat, user_spans
from tunelab.errors import DataError

IGNORE_INDEX = -100  # label value that carries no loss (torch's cross_entropy default)

Example = dict[str, Any]


@dataclass(frozen=True)
class LengthPolicy:
    max_seq_len: int
    truncation: str = "truncate"  # or "drop": leave out examples over max_seq_len
    min_tokens: int = 1
    max_tokens: int | None = None  # leave out examples longer than this (before truncation)
    side: str = "prompt"  # chats over max_seq_len: "prompt" cuts user turns first, "end" the row's end


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    # reason -> sources of the examples left out for it; reasons: too_short, too_long, over_max_seq_len, no_targets
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def add(self, other: TokenizeStats) -> None:
        self.examples += other.examples
        self.truncated += other.truncated
        for reason, sources in other.dropped.items():
            self.dropped.setdefault(reason, []).extend(sources)

    def drop(self, reason: str, source: str) -> None:
        self.dropped.setdefault(reason, []).append(source)

    @property
    def left_out(self) -> set[str]:
        """Sources of every example left out, whatever the reason."""
        return {source for sources in self.dropped.values() for source in sources}

    @property
    def without_targets(self) -> list[str]:
        return self.dropped.get("no_targets", [])

    def as_report(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "truncated": self.truncated,
            "dropped": {reason: len(sources) for reason, sources in self.dropped.items()},
            "dropped_examples": {reason: sources[:5] for reason, sources in self.dropped.items()},
        }


def require_fast(tokenizer: Any, why: str) -> None:
    """Offsets and word ids need a fast (Rust) tokenizer; refuse a slow one, saying what for."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"the tokenizer has no fast (Rust) implementation, which tunelab needs {why}",
            fix="use a model whose tokenizer ships tokenizer.json",
        )


def length_verdict(n_tokens: int, policy: LengthPolicy) -> str | None:
    """Why an example of this length is left out, or None to keep (and maybe truncate) it."""
    if n_tokens < policy.min_tokens:
        return "too_short"
    if policy.max_tokens is not None and n_tokens > policy.max_tokens:
        return "too_long"
    if n_tokens > policy.max_seq_len and policy.truncation == "drop":
        return "over_max_seq_len"
    return None


def tokenize_chats(
    tokenizer: Any, chats: list[Chat], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """Tokenise conversations; labels are the token ids inside assistant spans, IGNORE_INDEX elsewhere."""
    require_fast(tokenizer, "to map the loss mask")
    stats = TokenizeStats()
    examples: list[Example] = []
    for chat in chats:
        stats.examples += 1
        text, spans = render_chat(tokenizer, chat)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if (reason := length_verdict(len(ids), policy)) is not None:
            stats.drop(reason, chat.source)
            continue
        labels = [
            tok if _in_spans(a, b, spans) else IGNORE_INDEX for tok, (a, b) in zip(ids, offsets, strict=True)
        ]
        if len(ids) > policy.max_seq_len:
            stats.truncated += 1
            prompt = user_spans(text, chat) if policy.side == "prompt" else []
            ids, labels = _fit(ids, labels, _cuttable(offsets, labels, prompt), policy.max_seq_len)
        if count_causal_targets(labels) == 0:
            stats.drop("no_targets", chat.source)
            continue
        examples.append({"input_ids": ids, "labels": labels})
    return examples, stats


def _cuttable(offsets: list[tuple[int, int]], labels: list[int], prompt: list[Span]) -> list[int]:
    """Positions of the prompt tokens that may go, in the order they go: the earliest user turn first,
    each turn from its end (a single-turn prompt keeps its start, where instructions usually are)."""
    by_turn: list[list[int]] = [[] for _ in prompt]
    for i, ((a, b), label) in enumerate(zip(offsets, labels, strict=True)):
        if label != IGNORE_INDEX or b <= a:
            continue
        turn = next((t for t, span in enumerate(prompt) if span.start <= a < span.end), None)
        if turn is not None:
            by_turn[turn].append(i)
    return [i for positions in by_turn for i in reversed(positions)]


def _fit(ids: list[int], labels: list[int], cuttable: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Cut a row to max_len: remove prompt tokens (cuttable, in order) when that is enough to fit,
    else cut the row's end. Cutting the end is the fallback because an answer that does not fit even
    alone is better learned after its whole question than as a continuation of nothing."""
    excess = len(ids) - max_len
    if 0 < excess <= len(cuttable):
        gone = set(cuttable[:excess])
        kept = [i for i in range(len(ids)) if i not in gone]
        return [ids[i] for i in kept], [labels[i] for i in kept]
    return ids[:max_len], labels[:max_len]


def tokenize_texts(
    tokenizer: Any, texts: list[Text], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    """Plain text for continued pre-training: the loss is on every token.

    A document longer than max_seq_len is cut into consecutive chunks rather than truncated, since in
    pre-training every token is training signal (stats.truncated counts the documents that were cut).
    Each document ends with EOS so the model learns where documents end, and packed neighbours are
    told apart.
    """
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in texts:
        stats.examples += 1
        ids = list(tokenizer(record.text)["input_ids"])  # special tokens as the model expects (BOS)
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids.append(tokenizer.eos_token_id)
        if (reason := length_verdict(len(ids), policy)) is not None:
            stats.drop(reason, record.source)
            continue
        chunks = [ids[i : i + policy.max_seq_len] for i in range(0, len(ids), policy.max_seq_len)]
        stats.truncated += len(chunks) > 1
        # A last chunk of one token has nothing to predict (its only token is never a target): left out.
        kept = [chunk for chunk in chunks if len(chunk) > 1]
        if not kept:
            stats.drop("no_targets", record.source)
            continue
        examples.extend({"input_ids": chunk, "labels": list(chunk)} for chunk in kept)
    return examples, stats


def count_causal_targets(labels: list[int]) -> int:
    # The first token is never predicted (nothing precedes it), so it cannot be a target.
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


def _in_spans(start: int, end: int, spans: list[Span]) -> bool:
    """A token belongs to a span when its first character does; special tokens have empty offsets."""
    if end <= start:
        return False
    i = bisect.bisect_right([s.start for s in spans], start) - 1
    return i >= 0 and start < spans[i].end


def tokenize_labeled(
    tokenizer: Any, records: list[Labeled], label_map: dict[str, int], policy: LengthPolicy
) -> tuple[list[Example], TokenizeStats]:
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in records:
        stats.examples += 1
        encoded = tokenizer(record.text, record.text_pair)
        if (reason := length_verdict(len(encoded["input_ids"]), policy)) is not None:
            stats.drop(reason, record.source)
            continue
        if len(encoded["input_ids"]) > policy.max_seq_len:
            # Re-encode rather than slice, so the tokenizer keeps its closing special tokens ([SEP]).
            stats.truncated += 1
            encoded = tokenizer(record.text, record.text_pair, truncation=True, max_length=policy.max_seq_len)
        example: Example = {k: list(v) for k, v in encoded.items() if k in ("input_ids", "token_type_ids")}
        example["label"] = label_map[record.label]
        examples.append(example)
    return examples, stats


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch; padding is masked out of attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, torch.Tensor] = {
        "input_ids": pad_rows([e["input_ids"] for e in examples], width, pad_token_id),
        "attention_mask": pad_rows([[1] * len(e["input_ids"]) for e in examples], width, 0),
    }
    if "token_type_ids" in examples[0]:
        batch["token_type_ids"] = pad_rows([e["token_type_ids"] for e in examples], width, 0)
    if "labels" in examples[0]:
        batch["labels"] = pad_rows([e["labels"] for e in examples], width, IGNORE_INDEX)
    if "label" in examples[0]:
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


def pad_rows(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out
