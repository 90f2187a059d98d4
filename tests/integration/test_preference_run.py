"""Preference tuning and reward models through `tunelab train`, on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_recipe, write_jsonl
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
