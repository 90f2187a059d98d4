"""KTO: the loss against hand-computed values, its KL estimate (detached, clamped at 0), the weights,
the examples (rated rows, and pairs split into one of each) and the mismatched rows of a batch, and the
objective on a tiny Llama against each row scored on its own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from tests.unit.test_preference import lora_policy as dpo_lora_policy
from tunelab.data.pairs import encode_answer, tokenize_preferences
from tunelab.data.rated import DESIRABLE, collate_preference, collate_rated, mismatched, tokenize_rated
from tunelab.data.records import Message, Preference, Rated
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy
from tunelab.training.objectives import Batch
from tunelab.training.preference import (
    adapter_disabled_reference,
    kto_kl,
    kto_loss,
    kto_objective,
    sequence_logps,
)

RATED = [
    Rated((Message("user", "Where is my order?"),), "It was due on Monday.", True, "k:1"),
    Rated((Message("user", "Check my balance"),), "No.", False, "k:2"),
    Rated((Message("user", "Hello there!"),), "Good morning, how are you?", True, "k:3"),
]
PAIR = Preference((Message("user", "Lost card"),), "Blocked it.", "Bye.", "p:1")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------------------
# The loss and the KL estimate


def test_kto_loss_matches_hand_computed_values() -> None:
    policy, reference = t(-5.0, -7.0, -6.0), t(-5.5, -6.0, -5.0)
    desirable = torch.tensor([True, False, True])
    loss = kto_loss(policy, reference, torch.tensor(0.3), desirable, beta=0.1)
    # log-ratios 0.5, -1, -1 against z = 0.3: desirable 1 - σ(β(r - z)), undesirable 1 - σ(β(z - r))
    expected = [1 - sigmoid(0.1 * 0.2), 1 - sigmoid(0.1 * 1.3), 1 - sigmoid(0.1 * -1.3)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)


def test_kto_weights_scale_each_kind_of_example() -> None:
    policy, reference = t(-5.0, -7.0, -6.0), t(-5.5, -6.0, -5.0)
    desirable = torch.tensor([True, False, True])
    plain = kto_loss(policy, reference, torch.tensor(0.3), desirable, 0.1).tolist()
    weighted = kto_loss(policy, reference, torch.tensor(0.3), desirable, 0.1, 2.0, 0.5)
    assert weighted.tolist() == pytest.approx([2 * plain[0], 0.5 * plain[1], 2 * plain[2]], abs=1e-9)


def test_the_kl_estimate_is_a_detached_mean_clamped_at_zero() -> None:
    policy = torch.tensor([-3.0, -2.0], requires_grad=True)
    assert float(kto_kl(policy, torch.tensor([-3.5, -2.5]))) == pytest.approx(0.5)
    # A mean log-ratio below 0 (-0.25 here) is not a KL divergence: z is 0.
    assert float(kto_kl(policy, torch.tensor([-3.5, -1.0]))) == 0.0
    kl = kto_kl(policy, torch.tensor([-3.5, -2.5]))
    assert not kl.requires_grad  # a constant of the loss: no gradient reaches the mismatched rows
    loss = kto_loss(policy, torch.tensor([-3.0, -2.0]), kl, torch.tensor([True, False]), 0.1).sum()
    (grad,) = torch.autograd.grad(loss, policy)
    # d/dr of 1 - σ(β(r - z)) is -β σ'(·), of 1 - σ(β(z - r)) is +β σ'(·); both at r = 0, z = 0.5
    slope = 0.1 * sigmoid(0.05) * (1 - sigmoid(0.05))
    assert grad.tolist() == pytest.approx([-slope, slope], abs=1e-7)


# ---------------------------------------------------------------------------------------------
# Examples and batches


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ensure_chat_template(tokenizer, "chatml")
    return tokenizer


def test_a_pair_becomes_a_desirable_and_an_undesirable_example(tokenizer: Any) -> None:
    examples, stats = tokenize_rated(tokenizer, [*RATED, PAIR], LengthPolicy(max_seq_len=128))
    assert [e["desirable"] for e in examples] == [1, 0, 1, 1, 0]
    assert stats.examples == 4 and stats.dropped == {}  # records: three rows and one pair
    (pair,), _ = tokenize_preferences(tokenizer, [PAIR], LengthPolicy(max_seq_len=128))
    assert examples[3]["input_ids"] == pair["chosen_input_ids"]
    assert examples[4]["input_ids"] == pair["rejected_input_ids"]
    # Labels on the completion (and its end-of-turn marker) only.
    ids, labels = examples[1]["input_ids"], examples[1]["labels"]
    scored = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert scored.startswith("No.<|im_end|>")


def test_mismatched_rows_put_each_prompt_before_the_next_completion(tokenizer: Any) -> None:
    examples, _ = tokenize_rated(tokenizer, RATED, LengthPolicy(max_seq_len=128))
    batch = collate_rated(examples, tokenizer.pad_token_id)
    b = len(RATED)
    assert batch["input_ids"].shape[0] == 2 * b
    assert batch[DESIRABLE].tolist() == [True, False, True]
    for i in range(b):
        # Row b + i: prompt i, then completion (i + 1) mod b, as if that row had been written so.
        swapped = Rated(RATED[i].prompt, RATED[(i + 1) % b].completion, True)
        ids, labels = encode_answer(tokenizer, swapped, swapped.completion)
        n = int(batch["attention_mask"][b + i].sum())
        assert batch["input_ids"][b + i, :n].tolist() == ids
        assert batch["labels"][b + i, :n].tolist() == labels
    assert collate_preference(examples, tokenizer.pad_token_id).keys() == batch.keys()


def test_a_mismatched_row_is_no_longer_than_its_two_examples() -> None:
    long_prompt = {"input_ids": list(range(10, 30)), "labels": [IGNORE_INDEX] * 18 + [28, 29]}
    long_answer = {
        "input_ids": [1, 2, 3, 4, 5, 6, 7, 8],
        "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, 6, 7, 8],
    }
    row = mismatched(long_prompt, long_answer)
    # 18 prompt tokens + 6 answer tokens, cut to 20 by dropping the prompt's oldest four.
    assert row["input_ids"] == [*range(14, 28), 3, 4, 5, 6, 7, 8]
    assert row["labels"] == [IGNORE_INDEX] * 14 + [3, 4, 5, 6, 7, 8]


# ---------------------------------------------------------------------------------------------
# The objective on the tiny Llama


def lora_policy(folder: Path, *, init_lora_weights: bool = False) -> Any:
    """DPO's tests' policy (the same seeded adapter), in eval mode: KTO's numbers are checked without dropout."""
    return dpo_lora_policy(folder, init_lora_weights=init_lora_weights).eval()


@pytest.fixture(scope="module")
def batch(tokenizer: Any) -> Batch:
    examples, _ = tokenize_rated(tokenizer, [*RATED, PAIR], LengthPolicy(max_seq_len=128))
    return collate_rated(examples, tokenizer.pad_token_id)


def per_row_logps(model: Any, batch: Batch) -> torch.Tensor:
    """Each row scored alone, without padding, with and without the adapter."""
    sums = []
    with torch.no_grad():
        for row in range(batch["input_ids"].size(0)):
            n = int(batch["attention_mask"][row].sum())
            ids, labels = batch["input_ids"][row : row + 1, :n], batch["labels"][row : row + 1, :n]
            sums.append(sequence_logps(model(input_ids=ids).logits, labels)[0])
    return torch.cat(sums)


def test_the_objective_is_kto_on_the_rows_scored_alone(tiny_llama: Path, batch: Batch) -> None:
    model = lora_policy(tiny_llama)
    objective = kto_objective(0.5, adapter_disabled_reference(), 1.0, 1.5)
    out = objective.loss(model, batch)
    b = objective.count_targets(batch)
    assert b == 5  # examples, not rows: the mismatched rows only give z

    policy = per_row_logps(model, batch)
    with model.disable_adapter():
        reference = per_row_logps(model, batch)
    z = max(float((policy[b:] - reference[b:]).mean()), 0.0)
    desirable = batch[DESIRABLE]
    expected = kto_loss(policy[:b], reference[:b], torch.tensor(z), desirable, 0.5, 1.0, 1.5)
    assert float(out.loss_sum.detach()) == pytest.approx(float(expected.sum()), abs=1e-5)
    rewards = 0.5 * (policy[:b] - reference[:b])
    assert float(out.stats["kl"]) == pytest.approx(b * z, abs=1e-5)
    assert float(out.stats["reward_desirable"]) == pytest.approx(float(rewards[desirable].sum()), abs=1e-5)
    assert float(out.stats["reward_undesirable"]) == pytest.approx(float(rewards[~desirable].sum()), abs=1e-5)
    assert float(out.stats["desirable_share"]) == 3.0
    right = [
        (r > z) if d else (r < z)
        for r, d in zip((policy[:b] - reference[:b]).tolist(), desirable.tolist(), strict=True)
    ]
    assert float(out.stats["reward_accuracy"]) == sum(right)


def test_the_gradient_treats_the_kl_estimate_as_a_constant(tiny_llama: Path, batch: Batch) -> None:
    """The same loss by hand, with z computed apart as a plain number: the same gradient. Were z part
    of the graph, the mismatched rows would add their own term."""
    b = 5
    model = lora_policy(tiny_llama)
    out = kto_objective(0.5, adapter_disabled_reference()).loss(model, batch)
    out.loss_sum.backward()
    objective_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    by_hand = lora_policy(tiny_llama)
    rows = {k: v for k, v in batch.items() if k != DESIRABLE}
    with torch.no_grad(), by_hand.disable_adapter():
        ref = sequence_logps(
            by_hand(**{k: rows[k] for k in ("input_ids", "attention_mask")}).logits, rows["labels"]
        )[0]
    with torch.no_grad():
        ids, mask = rows["input_ids"][b:], rows["attention_mask"][b:]
        mismatched_logps = sequence_logps(
            by_hand(input_ids=ids, attention_mask=mask).logits, rows["labels"][b:]
        )[0]
    z = max(float((mismatched_logps - ref[b:]).mean()), 0.0)
    logits = by_hand(input_ids=rows["input_ids"][:b], attention_mask=rows["attention_mask"][:b]).logits
    logps = sequence_logps(logits, rows["labels"][:b])[0]
    kto_loss(logps, ref[:b], torch.tensor(z), batch[DESIRABLE], 0.5).sum().backward()
    hand_grads = {n: p.grad for n, p in by_hand.named_parameters() if p.grad is not None}

    assert objective_grads.keys() == hand_grads.keys() and len(hand_grads) > 0
    for name, grad in objective_grads.items():
        torch.testing.assert_close(grad, hand_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_kto_starts_at_half_of_each_weight_with_the_default_lora_init(tiny_llama: Path, batch: Batch) -> None:
    # lora_B = 0: the policy is the reference, every log-ratio and z are 0, each loss is w · (1 - σ(0)).
    model = lora_policy(tiny_llama, init_lora_weights=True)
    out = kto_objective(0.1, adapter_disabled_reference(), 2.0, 0.5).loss(model, batch)
    assert float(out.loss_sum.detach()) == pytest.approx(3 * 2.0 * 0.5 + 2 * 0.5 * 0.5, abs=1e-6)
    assert float(out.stats["kl"]) == pytest.approx(0.0, abs=1e-6)
