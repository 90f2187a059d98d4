"""Preference objectives: the losses match hand-computed values; the adapter-disabled reference equals a
separately loaded base model (same loss, same update) and leaves the model as it found it; the reward
model scores the last real token."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from tunelab.data.pairs import collate_pairs, tokenize_preferences
from tunelab.data.records import Message, Preference
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy
from tunelab.training.objectives import Batch, Objective
from tunelab.training.preference import (
    adapter_disabled_reference,
    bradley_terry_loss,
    dpo_loss,
    frozen_copy_reference,
    ipo_loss,
    orpo_loss,
    preference_objective,
    reward_objective,
    sequence_logps,
)

PAIRS = [
    Preference((Message("user", "Where is my order?"),), "It was due on Monday.", "Lost.", "p:1"),
    Preference((Message("user", "Check my balance"),), "Shown on the home screen.", "No.", "p:2"),
    Preference((Message("user", "Hello there!"),), "Good morning, how are you?", "Bye.", "p:3"),
]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x), written out so the expected values do not reuse torch."""
    return math.log(1 + math.exp(x))


# ---------------------------------------------------------------------------------------------
# Pure losses against hand-computed values (two pairs each)


def test_dpo_loss_matches_hand_computed_values() -> None:
    loss = dpo_loss(t(-5.0, -7.0), t(-6.0, -4.0), t(-5.5, -6.0), t(-5.0, -5.0), beta=0.1)
    # margins: (-5 + 5.5) - (-6 + 5) = 1.5 and (-7 + 6) - (-4 + 5) = -2; loss = log(1 + e^(-β·margin))
    assert loss.tolist() == pytest.approx([softplus(-0.15), softplus(0.2)], abs=1e-6)


def test_ipo_loss_matches_hand_computed_values() -> None:
    loss = ipo_loss(t(-0.5, -0.7), t(-0.6, -0.4), t(-0.55, -0.6), t(-0.5, -0.5), beta=0.25)
    # margins 0.15 and -0.2, regressed to 1/(2β) = 2
    assert loss.tolist() == pytest.approx([(0.15 - 2) ** 2, (-0.2 - 2) ** 2], abs=1e-6)


def test_orpo_loss_matches_hand_computed_values() -> None:
    chosen, rejected, beta = (-0.5, -1.2), (-0.9, -0.3), 0.1

    def expected(c: float, r: float) -> float:
        log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
        return -c + beta * softplus(-log_odds)

    loss = orpo_loss(t(*chosen), t(*rejected), beta)
    assert loss.tolist() == pytest.approx(
        [expected(*p) for p in zip(chosen, rejected, strict=True)], abs=1e-6
    )


def test_orpo_log_odds_stay_exact_for_answers_the_model_already_predicts() -> None:
    # An average log-prob near 0: log(1 - e^x) computed as log1p(-exp(x)) in float32 is off by ~1e-3.
    c, r, beta = -1e-4, -2.0, 1.0
    log_odds = (c - r) - (math.log(-math.expm1(c)) - math.log(-math.expm1(r)))
    loss = orpo_loss(torch.tensor([c]), torch.tensor([r]), beta)
    assert float(loss) == pytest.approx(-c + beta * softplus(-log_odds), rel=1e-6)


def test_bradley_terry_loss_matches_hand_computed_values() -> None:
    loss = bradley_terry_loss(t(1.0, -0.5), t(0.25, 0.5))
    assert loss.tolist() == pytest.approx([softplus(-0.75), softplus(1.0)], abs=1e-6)


def test_sequence_logps_equals_a_per_position_loop() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX
    labels[2, ::2] = IGNORE_INDEX
    sums, counts = sequence_logps(logits.bfloat16(), labels)
    assert sums.dtype == torch.float32

    rows = logits.bfloat16().float()
    expected_sums, expected_counts = [], []
    for b in range(3):
        total, n = 0.0, 0
        for pos in range(1, 6):  # the label at pos is predicted by the logits at pos - 1
            if labels[b, pos] != IGNORE_INDEX:
                total += float(torch.log_softmax(rows[b, pos - 1], -1)[labels[b, pos]])
                n += 1
        expected_sums.append(total)
        expected_counts.append(n)
    assert sums.tolist() == pytest.approx(expected_sums, abs=1e-5)
    assert counts.tolist() == expected_counts == [3, 3, 3]


def test_objectives_refuse_a_wrong_reference() -> None:
    with pytest.raises(ValueError, match="needs a reference"):
        preference_objective("dpo", 0.1, None)
    with pytest.raises(ValueError, match="takes no reference"):
        preference_objective("orpo", 0.1, adapter_disabled_reference())
    with pytest.raises(ValueError, match="unknown"):
        preference_objective("kto", 0.1, None)


# ---------------------------------------------------------------------------------------------
# On the tiny Llama


@pytest.fixture(scope="module")
def batch(tiny_llama: Path) -> Batch:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ensure_chat_template(tokenizer, "chatml")
    examples, stats = tokenize_preferences(tokenizer, PAIRS, LengthPolicy(max_seq_len=128))
    assert len(examples) == len(PAIRS) and stats.dropped == {}
    return collate_pairs(examples, tokenizer.pad_token_id)


def load_base(folder: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def lora_policy(folder: Path, *, init_lora_weights: bool = False) -> Any:
    torch.manual_seed(0)  # the same adapter weights every time
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(load_base(folder), config)
    model.train()
    return model


def adapter_weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def one_step(model: Any, objective: Objective, batch: Batch) -> tuple[float, dict[str, float]]:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = objective.loss(model, batch)
    pairs = objective.count_targets(batch)
    (out.loss_sum / pairs).backward()
    optimizer.step()
    return float(out.loss_sum.detach()) / pairs, {k: float(v) / pairs for k, v in out.stats.items()}


def test_adapter_disabled_reference_equals_a_separately_loaded_base(tiny_llama: Path, batch: Batch) -> None:
    shared = lora_policy(tiny_llama)
    copied = lora_policy(tiny_llama)
    before = adapter_weights(shared)
    assert before.keys() == adapter_weights(copied).keys() and len(before) > 0

    loss_shared, stats_shared = one_step(
        shared, preference_objective("dpo", 0.5, adapter_disabled_reference()), batch
    )
    reference = frozen_copy_reference(load_base(tiny_llama))
    loss_copied, stats_copied = one_step(copied, preference_objective("dpo", 0.5, reference), batch)

    assert loss_shared == pytest.approx(loss_copied, abs=1e-6)
    assert stats_shared == pytest.approx(stats_copied, abs=1e-6)
    # The random adapter makes the policy differ from the reference, so this is not the trivial log 2.
    assert abs(loss_shared - math.log(2)) > 1e-3
    after_shared, after_copied = adapter_weights(shared), adapter_weights(copied)
    for name, weight in after_shared.items():
        torch.testing.assert_close(weight, after_copied[name], atol=1e-6, rtol=0, msg=name)
    assert any(not torch.equal(before[n], after_shared[n]) for n in before)  # the step moved something


def test_the_reference_puts_the_model_back_as_it_was(tiny_llama: Path, batch: Batch) -> None:
    model = lora_policy(tiny_llama)
    # A frozen adapter weight and a module in eval mode: peft's disable_adapter would turn the first
    # trainable again on exit; the reference itself switches everything to eval.
    frozen_name, frozen = next((n, p) for n, p in model.named_parameters() if "lora_A" in n)
    frozen.requires_grad_(False)
    model.base_model.model.model.layers[0].eval()
    # Dropout in the policy's own attention: the reference must still be deterministic (eval mode).
    for layer in model.base_model.model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    # What gradient checkpointing turns on for peft models: without no_grad, the reference would build
    # a graph through its frozen weights.
    model.enable_input_require_grads()
    modes = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    assert len(set(modes.values())) == 2

    logps, counts = adapter_disabled_reference()(model, batch)
    assert not logps.requires_grad

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads, frozen_name
    # ... and the adapter is on again: the policy's log-probs differ from the reference's.
    base_logps, base_counts = frozen_copy_reference(load_base(tiny_llama))(None, batch)
    torch.testing.assert_close(logps, base_logps, atol=1e-5, rtol=0)
    assert torch.equal(counts, base_counts)
    model.eval()
    with torch.no_grad():
        policy = sequence_logps(
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, batch["labels"]
        )
    assert (policy[0] - logps).abs().max() > 1e-3


def test_the_frozen_copy_keeps_the_weights_it_was_given(tiny_llama: Path, batch: Batch) -> None:
    model = load_base(tiny_llama).train()
    reference = frozen_copy_reference(model)
    before, _ = reference(model, batch)
    assert not before.requires_grad
    assert all(p.requires_grad for p in model.parameters()) and model.training  # the policy is untouched
    torch.manual_seed(0)
    with torch.no_grad():  # what training does to the policy must not reach the reference
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    after, _ = reference(model, batch)
    assert torch.equal(before, after)
    moved, _ = frozen_copy_reference(model)(model, batch)
    assert (moved - before).abs().max() > 1e-3


class Wrapper(torch.nn.Module):
    """Stands in for DDP / accelerate: the real model under `.module`."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs: Any) -> Any:
        return self.module(**kwargs)


def test_the_reference_unwraps_a_wrapped_model(tiny_llama: Path, batch: Batch) -> None:
    wrapped = Wrapper(Wrapper(lora_policy(tiny_llama)))
    logps, _ = adapter_disabled_reference()(wrapped, batch)
    base_logps, _ = frozen_copy_reference(load_base(tiny_llama))(None, batch)
    torch.testing.assert_close(logps, base_logps, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="frozen_copy_reference"):
        adapter_disabled_reference()(Wrapper(load_base(tiny_llama)), batch)


def test_dpo_starts_at_log_2_with_the_default_lora_init(tiny_llama: Path, batch: Batch) -> None:
    # Default init sets lora_B = 0: the policy *is* the reference, every margin is 0.
    model = lora_policy(tiny_llama, init_lora_weights=True)
    objective = preference_objective("dpo", 0.1, adapter_disabled_reference())
    out = objective.loss(model, batch)
    pairs = objective.count_targets(batch)
    assert pairs == len(PAIRS)
    assert float(out.loss_sum.detach()) / pairs == pytest.approx(math.log(2), abs=1e-6)
    assert float(out.stats["reward_accuracy"]) == 0.0  # ties are not ranked right
    assert float(out.stats["reward_margin"]) == pytest.approx(0.0, abs=1e-6)

    ipo = preference_objective("ipo", 0.1, adapter_disabled_reference()).loss(model, batch)
    assert float(ipo.loss_sum.detach()) / pairs == pytest.approx((1 / (2 * 0.1)) ** 2, abs=1e-5)


def per_row_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row scored on its own, without padding: what the batched objectives must reproduce."""
    sums, counts = [], []
    with torch.no_grad():
        for row in range(batch["input_ids"].size(0)):
            n = int(batch["attention_mask"][row].sum())
            ids, labels = batch["input_ids"][row : row + 1, :n], batch["labels"][row : row + 1, :n]
            total, count = sequence_logps(model(input_ids=ids).logits, labels)
            sums.append(total)
            counts.append(count)
    return torch.cat(sums), torch.cat(counts).float()


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_dpo_sums_and_ipo_averages_the_log_ratios(tiny_llama: Path, batch: Batch, kind: str) -> None:
    model = lora_policy(tiny_llama).eval()
    out = preference_objective(kind, 0.5, adapter_disabled_reference()).loss(model, batch)

    policy, counts = per_row_logps(model, batch)
    ref, _ = per_row_logps(load_base(tiny_llama), batch)
    if kind == "ipo":
        policy, ref = policy / counts, ref / counts
    b = len(PAIRS)
    loss = dpo_loss if kind == "dpo" else ipo_loss
    expected = loss(policy[:b], policy[b:], ref[:b], ref[b:], 0.5).sum()
    assert float(out.loss_sum.detach()) == pytest.approx(float(expected), abs=1e-5)
    rewards = 0.5 * (policy - ref)
    assert float(out.stats["reward_chosen"]) == pytest.approx(float(rewards[:b].sum()), abs=1e-5)
    assert float(out.stats["reward_rejected"]) == pytest.approx(float(rewards[b:].sum()), abs=1e-5)
    assert float(out.stats["reward_accuracy"]) == float((rewards[:b] > rewards[b:]).sum())


def test_orpo_scores_each_answer_as_if_it_were_alone(tiny_llama: Path, batch: Batch) -> None:
    model = load_base(tiny_llama).eval()
    out = preference_objective("orpo", 0.1, None).loss(model, batch)

    sums, counts = per_row_logps(model, batch)
    averages = (sums / counts).tolist()
    b = len(PAIRS)
    expected = orpo_loss(torch.tensor(averages[:b]), torch.tensor(averages[b:]), 0.1).sum()
    assert float(out.loss_sum.detach()) == pytest.approx(float(expected), abs=1e-5)
    assert float(out.stats["reward_chosen"]) == pytest.approx(0.1 * sum(averages[:b]), abs=1e-5)
    assert float(out.stats["reward_rejected"]) == pytest.approx(0.1 * sum(averages[b:]), abs=1e-5)


def test_reward_objective_is_bradley_terry_on_the_last_real_token(tiny_llama: Path, batch: Batch) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1, dtype=torch.float32)
    assert model.config.pad_token_id is not None
    model.eval()
    objective = reward_objective()
    out = objective.loss(model, batch)
    assert objective.count_targets(batch) == len(PAIRS)

    # By hand: the score head over every position, read at each row's last non-padding token.
    with torch.no_grad():
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        per_position = model.score(hidden)[..., 0]
    last = batch["attention_mask"].sum(-1) - 1
    assert len(set(last.tolist())) > 1  # rows of different lengths, so the position matters
    scores = [float(per_position[i, j]) for i, j in enumerate(last.tolist())]
    b = len(PAIRS)
    chosen, rejected = scores[:b], scores[b:]
    expected = sum(softplus(r - c) for c, r in zip(chosen, rejected, strict=True))
    assert float(out.loss_sum.detach()) == pytest.approx(expected, abs=1e-6)
    assert float(out.stats["reward_accuracy"]) == sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert float(out.stats["reward_margin"]) == pytest.approx(sum(chosen) - sum(rejected), abs=1e-6)
    # Reading the last column instead (padding for the shorter rows) would give another loss.
    wrong = [float(per_position[i, -1]) for i in range(2 * b)]
    assert abs(sum(softplus(r - c) for c, r in zip(wrong[:b], wrong[b:], strict=True)) - expected) > 1e-4
