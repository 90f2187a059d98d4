"""`tunelab plan` end to end on the tiny offline models: the command, the probe, parameter counts on the
meta device against the loaded model, and suggestions the recipe loader accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import exact, make_recipe
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.data.pipeline import load_records, tokenize_records
from tunelab.models.load import load_model, load_tokenizer
from tunelab.models.methods import apply_method, count_parameters
from tunelab.plan import (
    alternatives_for,
    estimate_memory,
    method_facts,
    plan,
    probe,
    row_tokens,
    suggest,
    workload,
)

runner = CliRunner()


def test_plan_command_on_an_sft_recipe_says_whether_it_fits(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft")
    roomy = runner.invoke(app, ["plan", str(recipe), "--probe-steps", "1"])
    assert roomy.exit_code == 0, roomy.output
    assert "fits in" in roomy.output and "(RAM)" in roomy.output
    assert "measured peak" in roomy.output and "s per step" in roomy.output
    # Less than the Python process alone: it cannot fit. That is an answer, not an input error, and
    # scripts read it from the exit status: 3 (1 is a bad input).
    tight = runner.invoke(app, ["plan", str(recipe), "--probe-steps", "0", "--memory", "100MB"])
    assert tight.exit_code == 3, tight.output
    assert "does not fit in 100.0 MiB (--memory)" in tight.output
    assert "measured peak" not in tight.output and "--probe-steps N to measure" in tight.output


def test_plan_sizes_the_whole_train_process_not_only_training(tiny_llama: Path, tmp_path: Path) -> None:
    # `tunelab train` also scores the base model (baselines) and evaluates while the optimizer state is
    # held; a machine sized for training alone can run out in those. The plan sizes every phase.
    from tunelab.plan import Scoring

    path = make_recipe(tmp_path, tiny_llama, "sft", train={"max_seq_len": 64, "batch_size": 2})
    recipe = load_recipe(path)
    result = plan(recipe, None, probe_steps=1)
    run = result.run
    assert set(run.phases) == {"training", "evaluation", "baselines"}
    data = tokenize_records(recipe, load_records(recipe), load_tokenizer(recipe.model))
    held_out = max(row_tokens(e) for e in data.splits["validation"])
    assert run.scoring["evaluation"] == Scoring(
        2, held_out, f"2 held-out rows x {held_out} tokens (the longest)"
    )
    assert run.scoring["baselines"].rows == 3 and run.scoring["baselines"].seq_len == 64  # 3 validation chats
    assert result.probe is not None and result.probe.run_peak_bytes >= result.probe.peak_bytes
    assert result.needed == max(run.peak, result.probe.run_peak_bytes)
    shown = runner.invoke(app, ["plan", str(path), "--probe-steps", "1"])
    assert shown.exit_code == 0, shown.output
    assert (
        "the whole `tunelab train` process, by phase" in shown.output and "measured run peak" in shown.output
    )
    # Without baselines or a held-out split there is no such phase to size.
    bare = plan(load_recipe(path, ["eval.baselines=[]"]), None, probe_steps=0)
    assert set(bare.run.phases) == {"training", "evaluation"}


def test_plan_command_on_a_classify_recipe(tiny_bert: Path, tmp_path: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "full"})
    result = runner.invoke(app, ["plan", str(recipe), "--probe-steps", "0", "--memory", "1MB"])
    assert result.exit_code == 3, result.output  # planned, and it does not fit
    assert "does not fit in 1.0 MiB" in result.output
    assert "classification head: negligible" in result.output


def test_plan_command_refuses_a_size_without_a_unit(tiny_llama: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(make_recipe(tmp_path, tiny_llama, "sft")), "--memory", "24"])
    assert result.exit_code == 1
    assert "expected a size with a unit" in result.output


def test_probe_measures_step_time_and_peak_memory(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, tiny_llama, "sft"))
    measured = probe(recipe, 2)
    assert measured.steps == 2 and measured.device == "cpu"
    assert measured.step_s > 0 and measured.tokens_per_s > 0
    assert measured.peak_bytes >= measured.baseline_bytes > 100 * 2**20  # a Python process with torch


def test_estimate_is_within_a_quarter_of_the_measured_peak(tiny_llama: Path, tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, tiny_llama, "sft", method={"name": "full"}))
    result = plan(recipe, None, probe_steps=2)
    assert result.probe is not None and result.fits
    assert 0.75 < result.probe.peak_bytes / result.estimate.total < 1.25
    assert result.steps_per_epoch == 2 and result.total_steps == 4  # 8 chats, batch 2 x accum 2, 2 epochs


METHODS: list[tuple[str, str, dict[str, Any]]] = [
    ("sft", "full", {"name": "full"}),
    ("sft", "freeze", {"name": "freeze", "k": 1}),
    ("sft", "lora", {"name": "lora", "r": 4, "alpha": 8}),
    ("sft", "dora", {"name": "dora", "r": 4, "alpha": 8}),
    ("sft", "ia3", {"name": "ia3"}),
    ("sft", "prefix", {"name": "prefix", "num_virtual_tokens": 4}),
    ("sft", "prompt", {"name": "prompt", "num_virtual_tokens": 4}),
    ("sft", "adapter", {"name": "adapter", "reduction_factor": 4}),
    ("classify", "full", {"name": "full"}),
    ("classify", "lora", {"name": "lora", "r": 4, "alpha": 8}),
]


@exact
@pytest.mark.parametrize(("task", "label", "method"), METHODS, ids=[f"{t}-{n}" for t, n, _ in METHODS])
def test_meta_device_counts_equal_the_loaded_model(
    task: str, label: str, method: dict[str, Any], tiny_llama: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    model_dir = tiny_llama if task == "sft" else tiny_bert
    recipe = load_recipe(make_recipe(tmp_path, model_dir, task, method=method))
    data = tokenize_records(recipe, load_records(recipe), load_tokenizer(recipe.model))
    facts, _, _ = method_facts(recipe, recipe.method, data.label_map, None)
    loaded = load_model(recipe.model, recipe.task, data.label_map)
    real = apply_method(loaded.model, recipe.method, recipe.task, loaded.new_modules)
    assert (facts.trainable, facts.total) == count_parameters(real)  # (trainable, total)
    trainable_bytes = sum(p.numel() * p.element_size() for p in real.parameters() if p.requires_grad)
    assert facts.trainable_bytes == trainable_bytes


def test_suggestions_for_a_full_recipe_fit_and_load(tiny_llama: Path, tmp_path: Path) -> None:
    path = make_recipe(tmp_path, tiny_llama, "sft", method={"name": "freeze", "k": 2})
    recipe = load_recipe(path)
    tokenizer = load_tokenizer(recipe.model)
    data = tokenize_records(recipe, load_records(recipe), tokenizer)
    params, chunked, shape = method_facts(recipe, recipe.method, data.label_map, None)
    estimate = estimate_memory(params, workload(recipe, shape, data, 0, chunked))
    budget = estimate.total - 1
    lengths = [row_tokens(e) for e in data.splits["train"]]
    found = suggest(
        recipe,
        estimate,
        budget,
        alternatives=alternatives_for(recipe, data.label_map, False),
        lengths=lengths,
    )
    changes = [s.change.split()[0] for s in found]
    assert changes[:3] == ["micro-batch", "gradient", "method"]
    assert all(s.estimate.total <= budget for s in found)
    for suggestion in found:
        if not suggestion.overrides:  # gradient checkpointing: no recipe field yet
            continue
        changed = load_recipe(path, list(suggestion.overrides))  # every --set it prints is a valid recipe
        cfg = changed.train
        assert cfg.batch_size * cfg.grad_accum == recipe.train.batch_size * recipe.train.grad_accum
        if suggestion.change.startswith("method"):
            assert changed.method.name == "lora"  # and freeze's `k` went with the old section
