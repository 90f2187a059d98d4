"""The forgetting check: a reference scored on the base model and on the fine-tuned one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import SHARED_DATA, exact, make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.errors import RecipeError
from tunelab.evaluation.forgetting import load_reference, score
from tunelab.runner import train

QUESTIONS = [
    {"question": "Where is my order?", "choices": ["on its way", "blocked", "hello"], "answer": 0},
    {"question": "I lost my card", "choices": ["good morning", "blocked it", "5 sent"], "answer": 1},
    {"question": "Count: 1 2 3", "choices": ["lazy dog", "4 5 6", "fox"], "answer": 1},
    {"question": "How are you?", "choices": ["Good, thank you!", "transfer", "0 1"], "answer": 0},
]


def base_score(model_dir: Path, reference_file: Path) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return score(model, tokenizer, load_reference(reference_file))


def run_with_reference(tmp_path: Path, model_dir: Path, reference: Path, method: dict) -> dict:
    recipe = make_recipe(tmp_path, model_dir, "sft", method=method, train={"max_steps": 3, "lr": 0.05})
    result = train(load_recipe(recipe, [f"eval.reference={reference}", "eval.forgetting_tolerance=0.0"]))
    return {"summary": result.summary, "eval": json.loads((result.run_dir / "eval.json").read_text()),
            "report": (result.run_dir / "report.html").read_text()}  # fmt: skip


@exact
@pytest.mark.parametrize(
    "method", [{"name": "lora", "r": 4, "alpha": 8}, {"name": "full"}], ids=["lora", "full"]
)
def test_before_is_the_base_models_score_and_after_is_the_tuned_one(
    tmp_path: Path, tiny_llama: Path, method: dict
) -> None:
    reference = write_jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    run = run_with_reference(tmp_path, tiny_llama, reference, method)
    entry = run["eval"]["forgetting"]
    assert entry["metric"] == "accuracy"
    # lora: the same model with its adapter disabled; full: the weights before the first step.
    assert entry["before"] == base_score(tiny_llama, reference)
    assert entry["change"] == pytest.approx(entry["after"] - entry["before"])
    assert entry["warning"] == (entry["after"] < entry["before"])  # tolerance 0: any loss warns
    assert run["summary"].forgetting == entry
    assert 'id="forgetting"' in run["report"] and f"{entry['before']:.3f}"[:4] in run["report"]


@exact
def test_a_text_reference_is_scored_by_perplexity(tmp_path: Path, tiny_llama: Path) -> None:
    reference = tmp_path / "general.txt"
    reference.write_text("The quick brown fox jumps over the lazy dog.\nHello there, good morning.\n")
    run = run_with_reference(tmp_path, tiny_llama, reference, {"name": "lora", "r": 4, "alpha": 8})
    entry = run["eval"]["forgetting"]
    assert entry["metric"] == "perplexity"
    assert entry["before"] == pytest.approx(base_score(tiny_llama, reference), rel=1e-6)
    assert entry["before"] > 1


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"MMLU dev not found in {SHARED_DATA}")
def test_mmlu_dev_as_the_reference(tmp_path: Path, tiny_llama: Path) -> None:
    mmlu = SHARED_DATA / "mmlu" / "dev.jsonl"
    run = run_with_reference(tmp_path, tiny_llama, mmlu, {"name": "lora", "r": 4, "alpha": 8})
    entry = run["eval"]["forgetting"]
    assert entry["before"] == base_score(tiny_llama, mmlu)
    assert 0.1 <= entry["before"] <= 0.45  # a random model answers 285 four-way questions near chance


def test_the_check_needs_a_causal_lm(tmp_path: Path, tiny_bert: Path) -> None:
    reference = write_jsonl(tmp_path / "mc.jsonl", QUESTIONS)
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    with pytest.raises(RecipeError, match="forgetting check"):
        load_recipe(recipe, [f"eval.reference={reference}"])
