"""`model.adapter`: DPO from an SFT run's LoRA adapter, merged into the base as it loads.

The SFT run adds chat markers to a tokenizer that lacks them, so the DPO run must take the SFT run's
tokenizer and grow the base's embeddings before the merge. At its first step the DPO policy is the SFT
model; its reference (the adapter switched off) is the SFT model, not the raw base; and restoring the
DPO run rebuilds base + SFT + DPO from its folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import exact, make_recipe, only_run_dir, save_plain_llama, write_jsonl
from tunelab.config import load_recipe
from tunelab.data.pipeline import load_records, tokenize_records
from tunelab.errors import ModelLoadError, RecipeError
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.precision import precision_for
from tunelab.models.restore import load_trained
from tunelab.runner import train
from tunelab.training.objectives import build_objective, collate_for
from tunelab.training.setup import attach_method, load_for_training

PAIRS = [
    {
        "prompt": f"Can you help me with request {i}?",
        "chosen": f"Yes, happy to help with {i}.",
        "rejected": "No.",
    }
    for i in range(9)
]


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    return save_plain_llama(tmp_path_factory.mktemp("plain") / "model", tiny_llama)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, plain_model: Path) -> Path:
    root = tmp_path_factory.mktemp("sft")
    train(load_recipe(make_recipe(root, plain_model, "sft", train={"max_steps": 4})))
    return only_run_dir(root)


def dpo_recipe(tmp_path: Path, model: Path, adapter: Path, **sections: Any) -> Path:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:6])
    val = write_jsonl(tmp_path / "val_pairs.jsonl", PAIRS[6:])
    return make_recipe(
        tmp_path,
        model,
        "preference",
        model={"adapter": str(adapter)},
        data={"train": str(pairs), "validation": str(val)},
        preference={"objective": "dpo", "beta": 0.5},
        train={"max_steps": 3, "batch_size": 2, "grad_accum": 1, "eval_every": 3, "log_every": 1},
        **sections,
    )


def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def validation_batch(recipe: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    data = tokenize_records(recipe, load_records(recipe), tokenizer)
    return collate_for(recipe.task)(data.splits["validation"], tokenizer.pad_token_id)


@exact
def test_the_dpo_policy_starts_as_the_sft_model_and_takes_its_tokenizer(
    tmp_path: Path, plain_model: Path, sft_run: Path
) -> None:
    recipe = load_recipe(dpo_recipe(tmp_path, plain_model, sft_run))
    tokenizer = load_tokenizer(recipe.model, recipe.task)
    assert len(tokenizer) == 302 and "<|im_end|>" in tokenizer.get_vocab()  # the SFT run's markers
    data = tokenize_records(recipe, load_records(recipe), tokenizer)
    assert data.added_tokens == []  # nothing new to add: the SFT run's tokenizer has them
    precision = precision_for(recipe)
    policy = attach_method(
        recipe, load_for_training(recipe, None, tokenizer, precision), precision, data
    ).eval()
    sft = load_trained(sft_run).model
    batch = collate_for("preference")(data.splits["validation"], tokenizer.pad_token_id)
    torch.testing.assert_close(logits(policy, batch), logits(sft, batch), atol=1e-5, rtol=0)
    # ... and not the raw base, grown to the same vocabulary: the SFT adapter really is in the weights.
    raw = load_model(recipe.model.model_copy(update={"adapter": None}), "sft", tokenizer=tokenizer).model
    assert (logits(raw, batch) - logits(sft, batch)).abs().max() > 1e-3


@exact
def test_the_dpo_run_restores_as_trained_over_the_sft_model(
    tmp_path: Path, plain_model: Path, sft_run: Path
) -> None:
    recipe = load_recipe(dpo_recipe(tmp_path, plain_model, sft_run))
    result = train(recipe)
    final = result.run_dir / "final"
    info = json.loads((final / "tunelab.json").read_text())
    assert info["base_adapter"] == {
        "from": str((sft_run / "final").resolve()),
        "task": "sft",
        "method": "lora",
    }
    # The SFT run may go: the DPO run keeps the adapter it was merged with (final/base_adapter/).
    hidden = sft_run / ".final-hidden"
    (sft_run / "final").rename(hidden)
    try:
        trained = load_trained(result.run_dir)
    finally:
        hidden.rename(sft_run / "final")
    batch = validation_batch(recipe, trained.tokenizer)
    # The restored policy reproduces the run's last validation loss (DPO against the restored reference).
    objective = build_objective(recipe, trained.model)
    out = objective.loss(trained.model, batch)
    val_loss = float(out.loss_sum) / objective.count_targets(batch)
    assert val_loss == pytest.approx(result.summary.metrics["val_loss"], abs=1e-5)
    assert abs(val_loss - 0.6931) > 1e-3  # it trained: not the untrained log 2
    # Its reference, the adapter switched off, is the SFT model.
    with trained.model.disable_adapter():
        reference = logits(trained.model, batch)
    torch.testing.assert_close(reference, logits(load_trained(sft_run).model, batch), atol=1e-5, rtol=0)


def test_model_adapter_refuses_what_cannot_be_merged_into_model_name(
    tmp_path: Path, plain_model: Path, tiny_llama: Path, sft_run: Path
) -> None:
    def refused(adapter: Path, name: Path = plain_model, task: str = "preference") -> str:
        recipe = load_recipe(dpo_recipe(tmp_path, name, adapter))
        with pytest.raises(ModelLoadError) as err:
            load_tokenizer(recipe.model, task)
        return str(err.value)

    missing = tmp_path / "no-such-run"
    assert f"model.adapter: {missing}: no such run or model folder" in refused(missing)
    other_base = refused(sft_run, name=tiny_llama)
    assert (
        f"model.adapter: {sft_run} was trained on {plain_model}, but model.name is {tiny_llama}" in other_base
    )
    assert f"set model.name: {plain_model}" in other_base
    assert f"model.adapter: {sft_run} is a sft run, whose model head task classify does not use" in refused(
        sft_run, task="classify"
    )
    full_root = tmp_path / "full"
    full_root.mkdir()
    train(
        load_recipe(
            make_recipe(full_root, plain_model, "sft", method={"name": "full"}, train={"max_steps": 1})
        )
    )
    full_run = only_run_dir(full_root)
    message = refused(full_run)
    assert f"model.adapter: {full_run} holds full weights (full run), not an adapter" in message
    assert f"point model.name at {full_run / 'final'} instead" in message
    # A quantised base is refused with the recipe: merging would round the adapter into 8 bits.
    with pytest.raises(RecipeError, match=r"model\.adapter: cannot be merged into a quantised base"):
        load_recipe(dpo_recipe(tmp_path, plain_model, sft_run), ["model.load_in_8bit=true"])
