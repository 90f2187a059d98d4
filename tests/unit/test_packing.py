"""Packing changes nothing but speed: same targets, same logits, same summed loss as unpacked."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import random_labelled_examples
from tunelab.data.packing import (
    block_causal_mask,
    check_packing_supported,
    collate_packed,
    first_fit_decreasing,
    pack_examples,
)
from tunelab.data.tokenize import IGNORE_INDEX, collate, count_causal_targets
from tunelab.errors import RecipeError
from tunelab.training.objectives import causal_lm, causal_lm_targets

PAD = 1


@pytest.fixture(scope="module")
def model(tiny_llama: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def model_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Keys starting with "_" are bookkeeping for the loop, never model inputs.
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def logits(model: Any, **inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# 1. first-fit decreasing


def test_ffd_places_every_index_once_within_capacity_and_is_deterministic() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(1, 64) for _ in range(300)]
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert first_fit_decreasing(lengths, 64) == bins
    # Close to the lower bound: first-fit decreasing wastes little on uniform lengths.
    assert len(bins) <= -(-sum(lengths) // 64) * 1.1 + 1


def test_ffd_packs_tightly_and_breaks_ties_by_index() -> None:
    assert first_fit_decreasing([7, 5, 4, 3, 1], 10) == [[0, 3], [1, 2, 4]]
    assert first_fit_decreasing([3, 3, 3], 6) == [[0, 1], [2]]
    assert first_fit_decreasing([], 10) == []


def test_ffd_refuses_an_example_longer_than_capacity() -> None:
    with pytest.raises(ValueError, match="example 1 has length 11"):
        first_fit_decreasing([3, 11, 2], 10)


# 2. pack_examples


def test_pack_examples_restarts_positions_and_keeps_the_targets() -> None:
    examples = random_labelled_examples()
    rows = pack_examples(examples, max_len=64)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    assert len(rows) < len(examples)
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) <= 64
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0
        ends = [*starts[1:], len(row["position_ids"])]
        for start, end in zip(starts, ends, strict=True):
            assert row["position_ids"][start:end] == list(range(end - start))
            assert row["labels"][start] == IGNORE_INDEX
    packed_targets = sum(count_causal_targets(r["labels"]) for r in rows)
    assert packed_targets == sum(count_causal_targets(e["labels"]) for e in examples)


def test_collate_packed_pads_and_counts_real_tokens() -> None:
    rows = pack_examples(random_labelled_examples(), max_len=64)
    batch = collate_packed(rows, PAD)
    width = max(len(r["input_ids"]) for r in rows)
    assert (
        batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (len(rows), width)
    )
    assert batch["attention_mask"].shape == (len(rows), 1, width, width)
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["_real_tokens"].ndim == 0 and int(batch["_real_tokens"]) == sum(
        len(r["input_ids"]) for r in rows
    )
    for i, row in enumerate(rows):
        assert (batch["labels"][i, len(row["input_ids"]) :] == IGNORE_INDEX).all()


def test_block_causal_mask_is_causal_within_segments_and_padding_stands_alone() -> None:
    # Two examples (3 and 2 tokens), then two padding tokens with their own restarting positions.
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1, 0, 1]]))[0, 0].int()
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


# 3. the invariant: packed loss == unpacked loss


def test_packed_loss_and_targets_equal_unpacked(model: Any) -> None:
    examples = random_labelled_examples()
    unpacked = collate(examples, PAD)
    packed = collate_packed(pack_examples(examples, max_len=64), PAD)
    assert packed["input_ids"].numel() < unpacked["input_ids"].numel()  # packing did pack

    with torch.no_grad():
        loss_unpacked = causal_lm(model, unpacked).loss_sum
        loss_packed = causal_lm(model, model_batch(packed)).loss_sum

    assert causal_lm_targets(packed) == causal_lm_targets(unpacked) > 0
    # Measured: identical (difference 0.0 on a sum of ~185 over 31 targets); the tolerance allows for
    # a different fp32 reduction order on other kernels.
    torch.testing.assert_close(loss_packed, loss_unpacked, rtol=1e-5, atol=1e-5)


# 4. per-token logits of an example in the middle of a row


def middle_row(examples: list[dict]) -> tuple[dict[str, torch.Tensor], int, int]:
    """A row of three examples beside a shorter row; returns the batch and the middle example's span."""
    rows = pack_examples(examples[:3], max_len=sum(len(e["input_ids"]) for e in examples[:3]))
    assert len(rows) == 1
    order = [i for i, p in enumerate(rows[0]["position_ids"]) if p == 0]
    start, end = order[1], order[2]  # the example placed in the middle
    # A second, shorter row makes the batch padded, so padding is exercised too.
    batch = collate_packed([rows[0], pack_examples(examples[3:4], max_len=64)[0]], PAD)
    return batch, start, end


def test_logits_of_an_example_in_the_middle_equal_its_logits_alone(model: Any) -> None:
    examples = random_labelled_examples()
    batch, start, end = middle_row(examples)
    middle_ids = batch["input_ids"][0, start:end]

    alone = logits(model, input_ids=middle_ids[None])[0]
    packed = logits(model, **model_batch(batch))
    # Measured max |difference| 8.9e-8.
    torch.testing.assert_close(packed[0, start:end], alone, rtol=0, atol=1e-5)
    assert torch.isfinite(packed).all()  # padding rows of the mask are never empty, so no NaN anywhere


# 5. the tests above can fail


def test_without_the_block_mask_the_middle_example_changes(model: Any) -> None:
    examples = random_labelled_examples()
    batch, start, end = middle_row(examples)
    alone = logits(model, input_ids=batch["input_ids"][0:1, start:end])[0]

    # Restarting positions with a plain causal mask over the whole row: attention leaks across examples.
    leaky = logits(
        model,
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        attention_mask=torch.ones_like(batch["input_ids"]),
    )
    assert not torch.allclose(leaky[0, start:end], alone, atol=1e-3)


def test_position_ids_alone_do_not_isolate_examples_while_use_cache_is_on(model: Any) -> None:
    """Why collate_packed builds a mask: transformers infers packing from position_ids only when it
    has no cache, and Llama builds one because config.use_cache defaults to True. If this starts
    failing after an upgrade, the explicit mask may no longer be needed; see packing.py."""
    examples = random_labelled_examples()
    batch, start, end = middle_row(examples)
    row = {"input_ids": batch["input_ids"][0:1], "position_ids": batch["position_ids"][0:1]}
    alone = logits(model, input_ids=batch["input_ids"][0:1, start:end])[0]

    assert model.config.use_cache
    assert not torch.allclose(logits(model, **row)[0, start:end], alone, atol=1e-3)
    torch.testing.assert_close(logits(model, **row, use_cache=False)[0, start:end], alone, rtol=0, atol=1e-5)


def test_check_packing_supported_refuses_other_attention(model: Any, tiny_llama: Path) -> None:
    check_packing_supported(model)
    eager = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="eager")
    with pytest.raises(RecipeError, match=r"train\.packing: needs attn_implementation=.sdpa."):
        check_packing_supported(eager)
