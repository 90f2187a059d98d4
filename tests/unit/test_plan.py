"""`tunelab plan`'s arithmetic: the estimator on hand-computable shapes, parameter counting on the meta
device, the suggestions and the --memory parser. No weights are read and no training runs here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import LABELED, write_jsonl
from tunelab.config import Recipe
from tunelab.errors import TunelabError
from tunelab.methods.lora import LoraMethod
from tunelab.plan import (
    HIDDEN_ELEMENTS_PER_TOKEN,
    LOSS_CHUNK_TOKENS,
    NF4_BYTES_PER_WEIGHT,
    OUTSIDE_ELEMENTS_PER_TOKEN,
    SAME_RESULT,
    ModelShape,
    ParamFacts,
    Workload,
    activation_bytes,
    estimate_memory,
    param_facts,
    parse_memory,
    suggest,
)

MiB = 2**20

# A Llama small enough to count by hand: hidden 64, MLP 128, 2 blocks, 4 heads, vocabulary 100.
H, MLP, L, V = 64, 128, 2, 100
EMBED = V * H
BLOCK = 4 * H * H + 3 * H * MLP + 2 * H  # q, k, v, o; gate, up, down; two RMSNorm weights
TOTAL = EMBED + L * BLOCK + H + V * H  # + final norm + untied lm_head = 95,040
LORA_R = 4
# LoRA adds r x (in + out) per adapted Linear: q, k, v, o (64 -> 64), gate and up (64 -> 128), down.
LORA_PER_BLOCK = LORA_R * (4 * (H + H) + 2 * (H + MLP) + (MLP + H))  # 4,352
SHAPE = ModelShape(
    hidden_size=H, intermediate_size=MLP, num_layers=L, num_heads=4, num_kv_heads=4, vocab_size=V
)


def meta_llama(method: str = "full") -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=H,
        intermediate_size=MLP,
        num_hidden_layers=L,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=V,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=LORA_R, target_modules="all-linear"))
    return model


def work(**changes: Any) -> Workload:
    base = Workload(shape=SHAPE, batch_size=4, seq_len=32, dtype_bytes=4, grad_layers=L)
    return dataclasses.replace(base, **changes)


# ---------------------------------------------------------------------------------------------
# parameters, gradients, optimizer state


def test_full_and_lora_parameter_counts_and_bytes_are_exact_on_the_meta_device() -> None:
    full = param_facts(meta_llama("full"))
    assert (full.total, full.trainable) == (TOTAL, TOTAL) == (95_040, 95_040)
    assert full.weight_bytes == full.trainable_bytes == 4 * TOTAL
    assert full.head_grad_bytes == 4 * V * H  # the untied lm_head trains, so the fused loss sums its gradient

    lora = param_facts(meta_llama("lora"))
    assert lora.trainable == L * LORA_PER_BLOCK == 8_704
    assert lora.total == TOTAL + lora.trainable
    assert lora.trainable_bytes == 4 * lora.trainable
    assert lora.head_grad_bytes == 0  # LoRA leaves the head frozen


def test_gradients_and_adamw_state_follow_the_trainable_parameters() -> None:
    full = estimate_memory(param_facts(meta_llama("full")), work())
    lora = estimate_memory(param_facts(meta_llama("lora")), work())
    assert (full.weights, full.gradients, full.optimizer) == (4 * TOTAL, 4 * TOTAL, 8 * TOTAL)
    trainable = L * LORA_PER_BLOCK
    assert (lora.gradients, lora.optimizer) == (4 * trainable, 8 * trainable)
    assert lora.weights == 4 * (TOTAL + trainable)
    # fp32 master weights and moments (a mixed-precision setup tunelab does not use): 12 bytes each.
    mixed = estimate_memory(ParamFacts(10, 10, 20, 20), work(master_weights=True))
    assert mixed.optimizer == 12 * 10
    # DPO with full fine-tuning keeps a frozen copy of the starting weights.
    assert estimate_memory(ParamFacts(10, 10, 40, 40), work(reference_copy=True)).weights == 80


def test_a_4bit_base_stores_its_frozen_linear_weights_packed_and_the_rest_in_float32() -> None:
    model = meta_llama("lora")
    facts = param_facts(model, "4bit")
    quantised = L * (4 * H * H + 3 * H * MLP)  # every block Linear's base weight; not embeddings, norms, head
    others = TOTAL - quantised + L * LORA_PER_BLOCK
    per_module = [H * H] * 4 + [H * MLP] * 3
    packed = L * sum(int(-(-n * NF4_BYTES_PER_WEIGHT // 1)) for n in per_module)  # ceil per module
    assert facts.weight_bytes == packed + 4 * others
    assert facts.trainable_bytes == 4 * L * LORA_PER_BLOCK
    assert facts.weight_bytes < param_facts(model).weight_bytes


# ---------------------------------------------------------------------------------------------
# activations and logits


def test_activations_scale_linearly_with_batch_and_length() -> None:
    one = activation_bytes(work())
    assert activation_bytes(work(batch_size=8)) == pytest.approx(2 * one, abs=1)
    assert activation_bytes(work(seq_len=64)) == pytest.approx(2 * one, abs=1)
    assert activation_bytes(work(rows_per_example=2)) == pytest.approx(2 * one, abs=1)  # chosen + rejected
    assert activation_bytes(work(dtype_bytes=2)) == pytest.approx(one / 2, abs=1)
    # Materialised attention probabilities grow with the square of the length.
    probs = activation_bytes(work(attention_probs=True))
    assert activation_bytes(work(attention_probs=True, seq_len=64)) > 2 * probs > 2 * one


def test_activations_count_the_blocks_gradients_flow_through() -> None:
    tokens = 4 * 32
    per_block = tokens * (HIDDEN_ELEMENTS_PER_TOKEN * H + 5.4 * MLP) * 4
    outside = OUTSIDE_ELEMENTS_PER_TOKEN * tokens * H * 4
    assert activation_bytes(work()) == int(L * per_block + outside)
    assert activation_bytes(work(grad_layers=1)) == int(per_block + outside)  # freeze k=1
    assert activation_bytes(work(grad_layers=0)) == int(outside)  # freeze k=0: the head alone


def test_gradient_checkpointing_keeps_only_block_inputs_plus_one_block() -> None:
    deep = dataclasses.replace(SHAPE, num_layers=24)
    plain = activation_bytes(work(shape=deep, grad_layers=24))
    checkpointed = activation_bytes(work(shape=deep, grad_layers=24, checkpointing=True))
    tokens = 4 * 32
    per_block = tokens * (HIDDEN_ELEMENTS_PER_TOKEN * H + 5.4 * MLP) * 4
    outside = OUTSIDE_ELEMENTS_PER_TOKEN * tokens * H * 4
    assert checkpointed == int(24 * tokens * H * 4 + per_block + outside)
    assert checkpointed < plain / 4


def test_plain_loss_logits_and_the_chunked_loss_that_removes_them() -> None:
    params = ParamFacts(total=1, trainable=1, weight_bytes=4, trainable_bytes=4, head_grad_bytes=4 * V * H)
    long = work(batch_size=8, seq_len=1024)  # 8,192 tokens: more than a chunk
    tokens = 8 * 1024
    plain = estimate_memory(params, long).logits
    # logits, their float32 copy, log-softmax's output and its gradient: 4 float32 [tokens, V] buffers
    assert plain == tokens * V * 16
    chunked = estimate_memory(params, dataclasses.replace(long, chunked_loss=True)).logits
    assert chunked == LOSS_CHUNK_TOKENS * V * 4 + tokens * H * 4 + 4 * V * H
    # The vocabulary-sized part no longer grows with the tokens: doubling them adds only hidden-sized state.
    longer = estimate_memory(params, dataclasses.replace(long, chunked_loss=True, batch_size=16)).logits
    assert longer - chunked == tokens * H * 4
    # bfloat16 logits: one 2-byte buffer and three float32 ones.
    assert estimate_memory(params, dataclasses.replace(long, dtype_bytes=2)).logits == tokens * V * 14
    # A classification head has no vocabulary logits.
    assert estimate_memory(params, dataclasses.replace(long, causal_lm=False)).logits == 0


def test_the_total_is_the_sum_of_the_components() -> None:
    estimate = estimate_memory(ParamFacts(100, 10, 400, 40, 0), work(overhead=123))
    assert estimate.total == sum(estimate.components().values())
    assert estimate.overhead == 123


# ---------------------------------------------------------------------------------------------
# suggestions


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    train = write_jsonl(tmp_path / "train.jsonl", LABELED)
    return Recipe.model_validate(
        {
            "name": "plan-test",
            "task": "sft",
            "model": {"name": "some/model"},
            "data": {"train": str(train)},
            "method": {"name": "full"},
            "train": {"batch_size": 8, "grad_accum": 2, "max_seq_len": 256},
        }
    )


def lean_alternative() -> Any:
    from tunelab.plan import FEWER_WEIGHTS, Alternative

    lora = param_facts(meta_llama("lora"))
    return Alternative("lora", ("method={name: lora, r: 4, alpha: 8}",), lora, False, False, FEWER_WEIGHTS)


def test_suggestions_fit_and_come_least_change_first(recipe: Recipe) -> None:
    full = estimate_memory(
        param_facts(meta_llama("full")), work(batch_size=8, seq_len=256, overhead=100 * MiB)
    )
    budget = full.total - 1
    found = suggest(recipe, full, budget, alternatives=[lean_alternative()], lengths=[256, 200, 100, 50])
    assert [s.change.split()[0] for s in found] == ["micro-batch", "gradient", "method", "max_seq_len"]
    assert all(s.estimate.total <= budget for s in found)
    ranks = [s.rank for s in found]
    assert ranks == sorted(ranks) and ranks[0] == SAME_RESULT
    micro = found[0]
    # The largest smaller divisor of 8 that fits (4), and the effective batch 8 x 2 kept.
    assert micro.overrides == ("train.batch_size=4", "train.grad_accum=4")
    assert micro.estimate.work.batch_size == 4
    # Halving max_seq_len to 128 cuts two of four rows: 128 + 72 of 606 tokens.
    cut = found[-1]
    assert cut.overrides == ("train.max_seq_len=128",)
    assert "2 of 4 training rows (33.0% of their tokens)" in cut.effect


def test_each_suggestion_is_the_mildest_setting_that_fits(recipe: Recipe) -> None:
    full = estimate_memory(param_facts(meta_llama("full")), work(batch_size=8, seq_len=256))
    one = estimate_memory(full.params, dataclasses.replace(full.work, batch_size=1))
    two = estimate_memory(full.params, dataclasses.replace(full.work, batch_size=2))
    found = suggest(recipe, full, budget=(one.total + two.total) // 2)  # only micro-batch 1 fits
    micro = next(s for s in found if s.change.startswith("micro-batch"))
    assert micro.overrides == ("train.batch_size=1", "train.grad_accum=16")


def test_no_suggestions_when_it_fits_or_when_nothing_can(recipe: Recipe) -> None:
    estimate = estimate_memory(param_facts(meta_llama("full")), work(overhead=500 * MiB))
    assert suggest(recipe, estimate, estimate.total) == []
    # Below the process's own baseline nothing helps, not even every change together.
    assert suggest(recipe, estimate, 400 * MiB, alternatives=[lean_alternative()], lengths=[32]) == []


def test_a_combination_when_no_single_change_fits(recipe: Recipe) -> None:
    from tunelab.plan import FEWER_WEIGHTS, Alternative

    # Big weights (only a leaner method helps those) and big activations (only a smaller batch or
    # checkpointing help those): no single change is enough, all of them together are.
    wide = ModelShape(hidden_size=4096, intermediate_size=11008, num_layers=2, num_heads=32, num_kv_heads=32,
                      vocab_size=V)  # fmt: skip
    full = estimate_memory(
        ParamFacts(10**7, 10**7, 4 * 10**7, 4 * 10**7), work(shape=wide, batch_size=8, seq_len=16)
    )
    lora = Alternative("lora", ("method={name: lora, r: 8, alpha: 16}",), ParamFacts(10**7, 10**5, 4 * 10**7, 4 * 10**5),
                       False, False, FEWER_WEIGHTS)  # fmt: skip
    budget = 100 * MiB

    def total(params: ParamFacts, **changes: Any) -> int:
        return estimate_memory(params, dataclasses.replace(full.work, **changes)).total

    assert min(total(full.params, batch_size=1), total(full.params, checkpointing=True),
               total(lora.params), total(full.params, seq_len=8)) > budget  # fmt: skip
    found = suggest(recipe, full, budget, alternatives=[lora])
    assert [s.change for s in found] == ["together: micro-batch 1, gradient checkpointing, method lora"]
    assert found[0].estimate.work.checkpointing
    assert found[0].estimate.total <= budget
    assert found[0].overrides == (
        "train.batch_size=1",
        "train.grad_accum=16",
        "train.gradient_checkpointing=true",
        *lora.overrides,
    )


# ---------------------------------------------------------------------------------------------
# --memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GB", 24 * 2**30),
        ("24GiB", 24 * 2**30),
        ("512mb", 512 * MiB),
        ("1.5T", int(1.5 * 2**40)),
        ("64K", 65536),
    ],
)
def test_memory_sizes_parse_in_powers_of_1024(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["24", "lots", "-1GB", "0GB", "GB"])
def test_memory_sizes_without_a_unit_or_value_are_refused(text: str) -> None:
    with pytest.raises(TunelabError):
        parse_memory(text)


def test_lora_method_counts_match_peft_for_the_recipe_default_rank() -> None:
    # The recipe's LoraMethod defaults (r=8) reach peft unchanged through models/methods.py.
    from tunelab.models.methods import apply_method

    with torch.device("meta"):
        model = apply_method(meta_llama("full"), LoraMethod(name="lora"), "sft", [])
    assert param_facts(model).trainable == L * LORA_PER_BLOCK * 8 // LORA_R


def test_the_run_peak_is_the_largest_phase_not_always_training() -> None:
    from tunelab.plan import Scoring, estimate_run, scoring_bytes

    params = ParamFacts(TOTAL, TOTAL, 4 * TOTAL, 4 * TOTAL)
    short = work(batch_size=1, seq_len=16, overhead=100 * MiB)
    training = estimate_memory(params, short)
    # Few-shot contexts fill max_seq_len: 8 conversations x 2048 tokens, against one 16-token row trained.
    few_shot = Scoring(rows=8, seq_len=2048, what="baselines")
    tokens = 8 * 2048
    assert scoring_bytes(short, few_shot) == tokens * (6 * H + 3 * MLP) * 4 + tokens * V * (4 + 2 * 4)
    run = estimate_run(training, Scoring(1, 16, "evaluation"), few_shot)
    assert run.phases["training"] == training.total
    # Evaluation holds the weights and the optimizer state (gradients are freed); baselines the weights.
    evaluation = (
        training.weights + training.optimizer + training.overhead + scoring_bytes(short, Scoring(1, 16, ""))
    )
    assert run.phases["evaluation"] == evaluation < training.total
    assert run.phases["baselines"] == 4 * TOTAL + 100 * MiB + scoring_bytes(short, few_shot)
    assert run.peak_phase == "baselines" and run.peak == run.phases["baselines"] > training.total
    assert estimate_run(training, None, None).phases == {"training": training.total}
