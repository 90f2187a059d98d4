"""Preference tuning and reward models through `tunelab train`, on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import exact, make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.errors import RecipeError
from tunelab.runner import train

PAIRS = [
    {
        "prompt": f"Can you help me with request {i}?",
        "chosen": f"Yes, happy to help with {i}.",
        "rejected": "No.",
    }
    for i in range(10)
]
REWARD_KEYS = {"reward_accuracy", "reward_chosen", "reward_rejected", "reward_margin"}


def preference_recipe(
    tmp_path: Path, tiny_llama: Path, task: str, method: dict, loss: dict | None = None, **train: object
) -> Path:
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:8])
    val = write_jsonl(tmp_path / "val_pairs.jsonl", PAIRS[8:])
    settings = {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "eval_every": 4, "log_every": 2, **train}
    return make_recipe(
        tmp_path,
        tiny_llama,
        task,
        data={"train": str(data), "validation": str(val)},
        method=method,
        train=settings,
        **({"preference": loss} if loss else {}),
    )


@pytest.mark.parametrize("objective", ["dpo", "ipo", "orpo"])
def test_preference_runs_log_rewards_and_learn_the_preferred_answer(
    objective: str, tmp_path: Path, tiny_llama: Path
) -> None:
    method, loss = {"name": "lora", "r": 4, "alpha": 8}, {"objective": objective, "beta": 0.1}
    result = train(load_recipe(preference_recipe(tmp_path, tiny_llama, "preference", method, loss)))
    metrics = result.summary.metrics
    assert {f"val_{key}" for key in REWARD_KEYS} <= set(metrics)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert set(train_lines[0]) >= REWARD_KEYS
    # The rejected answer is always "No.": a few steps at lr 1e-2 are enough to rank every held-out pair.
    assert metrics["val_reward_accuracy"] == 1.0
    assert metrics["val_reward_margin"] > 0
    assert (result.run_dir / "final" / "adapter_config.json").is_file()


def test_dpo_with_full_fine_tuning_uses_a_frozen_copy(tmp_path: Path, tiny_llama: Path) -> None:
    loss = {"objective": "dpo", "beta": 0.1}
    recipe = preference_recipe(tmp_path, tiny_llama, "preference", {"name": "full"}, loss, lr=1e-3)
    result = train(load_recipe(recipe))
    # Were the reference the live model, policy and reference would always agree: every reward 0, every
    # loss log 2 and no pair ranked. A frozen copy lets the rewards separate.
    assert result.summary.metrics["val_reward_accuracy"] > 0.5
    assert result.summary.metrics["val_loss"] < 0.6931


def test_reward_model_learns_pairwise_ranking(tmp_path: Path, tiny_llama: Path) -> None:
    method = {"name": "lora", "r": 4, "alpha": 8}
    result = train(load_recipe(preference_recipe(tmp_path, tiny_llama, "reward", method, max_steps=6)))
    metrics = result.summary.metrics
    assert metrics["val_reward_accuracy"] == 1.0
    assert metrics["val_loss"] < 0.6931  # below the Bradley-Terry loss of a model that cannot tell
    info = json.loads((result.run_dir / "final" / "tunelab.json").read_text())
    assert info["task"] == "reward"


def test_preference_settings_are_refused_for_other_tasks(tmp_path: Path, tiny_llama: Path) -> None:
    # Written, even at its default value: `beta: 0.1` in an sft recipe is a mistake, not a no-op.
    recipe = make_recipe(tmp_path, tiny_llama, "sft", preference={"beta": 0.1})
    with pytest.raises(RecipeError, match=r"preference\.beta: applies to task: preference only"):
        load_recipe(recipe)
    # An older recipe.yaml with method.objective: the setting moves to its section, and is refused there.
    old = make_recipe(tmp_path, tiny_llama, "sft", method={"name": "lora", "objective": "ipo"})
    with pytest.raises(RecipeError, match=r"preference\.objective: applies to task: preference only"):
        load_recipe(old)
    # The defaults an older run saved for every task are dropped, and the recipe loads.
    saved = make_recipe(tmp_path, tiny_llama, "sft", method={"name": "lora", "objective": "dpo", "beta": 0.1})
    assert load_recipe(saved).preference.model_fields_set == set()


RATED = [
    {"prompt": f"Can you help me with request {i}?", "completion": "No.", "label": False}
    if i % 3 == 2
    else {
        "prompt": f"Can you help me with request {i}?",
        "completion": f"Yes, happy to help with {i}.",
        "label": True,
    }
    for i in range(12)
]
KTO_KEYS = {"kl", "reward_accuracy", "reward_desirable", "reward_undesirable", "desirable_share"}


def kto_recipe(tmp_path: Path, tiny_llama: Path, train_rows: list[dict], **preference: object) -> Path:
    data = write_jsonl(tmp_path / "rated.jsonl", train_rows)
    val = write_jsonl(tmp_path / "val_rated.jsonl", RATED[9:])
    return make_recipe(
        tmp_path,
        tiny_llama,
        "preference",
        data={"train": str(data), "validation": str(val)},
        preference={"objective": "kto", "beta": 1.0, **preference},
        train={"max_steps": 6, "batch_size": 3, "grad_accum": 1, "eval_every": 6, "log_every": 1},
    )


@exact
def test_kto_on_rated_rows_learns_and_only_the_adapter_moves(tmp_path: Path, tiny_llama: Path) -> None:
    result = train(load_recipe(kto_recipe(tmp_path, tiny_llama, RATED[:9])))
    summary = result.summary
    # Default LoRA init: the policy is its reference, every log-ratio and z are 0, each loss 1 - σ(0).
    assert summary.before_training["val_loss"] == pytest.approx(0.5, abs=1e-6)
    assert summary.metrics["val_loss"] < 0.5
    assert summary.metrics["val_reward_accuracy"] > 0.5
    assert summary.metrics["val_desirable_share"] == pytest.approx(2 / 3)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if "loss" in line]
    assert set(train_lines[0]) >= KTO_KEYS
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    adapter = load_file(result.run_dir / "final" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)  # the base weights stayed as they were
    report = json.loads((result.run_dir / "data" / "report.json").read_text())
    assert report["splits"]["train"]["format"] == "kto"


def test_kto_batches_are_not_grouped_by_length(tmp_path: Path, tiny_llama: Path) -> None:
    # Sorted by length, the short "No." answers would share batches, and a batch of undesirable answers
    # only reads z off their own rewards (the run above then learns nothing in those steps).
    from accelerate import Accelerator

    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.models.load import load_tokenizer
    from tunelab.training.setup import train_batches

    kto = load_recipe(kto_recipe(tmp_path, tiny_llama, RATED[:9]))
    dpo = load_recipe(preference_recipe(tmp_path, tiny_llama, "preference", {"name": "lora"}))
    for recipe, grouped in ((kto, False), (dpo, True)):
        tokenizer = load_tokenizer(recipe.model, recipe.task)
        data = tokenize_records(recipe, load_records(recipe), tokenizer)
        batches, _ = train_batches(recipe, data, tokenizer.pad_token_id, Accelerator(cpu=True))
        assert recipe.train.group_by_length and batches.group_by_length is grouped


@exact
def test_kto_reads_preference_pairs_as_one_desirable_and_one_undesirable_answer(
    tmp_path: Path, tiny_llama: Path
) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:6])
    recipe = kto_recipe(tmp_path, tiny_llama, RATED[:9], undesirable_weight=2.0)
    result = train(load_recipe(recipe, [f"data.train={pairs}"]))
    report = json.loads((result.run_dir / "data" / "report.json").read_text())
    assert report["splits"]["train"]["format"] == "preference"
    assert report["tokenize"]["train"]["examples"] == 6  # pairs, each two examples
    # The untrained loss is each weight times 1 - σ(0): validation holds 2 desirable, 1 undesirable.
    assert result.summary.before_training["val_loss"] == pytest.approx((2 * 0.5 + 2.0 * 0.5) / 3, abs=1e-6)


def test_kto_settings_are_refused_where_they_do_not_apply(tmp_path: Path, tiny_llama: Path) -> None:
    dpo = preference_recipe(
        tmp_path, tiny_llama, "preference", {"name": "lora"}, {"objective": "dpo", "desirable_weight": 2.0}
    )
    with pytest.raises(
        RecipeError, match=r"preference\.desirable_weight: applies to preference\.objective: kto only"
    ):
        load_recipe(dpo)
    with pytest.raises(RecipeError, match=r"train\.batch_size: kto needs 2 or more examples per micro-batch"):
        load_recipe(kto_recipe(tmp_path, tiny_llama, RATED[:9]), ["train.batch_size=1"])
    # A DPO run's saved recipe.yaml leaves KTO's weights out, so it reads back (resume, eval).
    result = train(
        load_recipe(preference_recipe(tmp_path, tiny_llama, "preference", {"name": "lora", "r": 4}))
    )
    assert "desirable_weight" not in (result.run_dir / "recipe.yaml").read_text()
    assert load_recipe(result.run_dir / "recipe.yaml").preference.objective == "dpo"
