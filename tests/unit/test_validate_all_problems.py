"""`validate` reports every problem in one pass: each wrong field, and beside them every cross-field
problem whose fields parsed; a cross-field check that reads a wrong field is left out (that field's own
error says what is wrong)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import write_jsonl
from tunelab.config import load_recipe
from tunelab.errors import RecipeError

PACKING = (
    "train.packing: method prefix prepends virtual tokens, which peft cannot combine with packed rows; "
    "set train.packing: false"
)
BETA = "preference.beta: applies to task: preference only"


@pytest.fixture
def issue_example(tmp_path: Path) -> dict[str, Any]:
    """The issue's recipe: an unknown early-stopping metric, packing with prefix tuning, and
    preference.beta on an sft recipe."""
    rows = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    return {
        "name": "demo",
        "task": "sft",
        "model": {"name": "org/model"},
        "data": {"train": str(rows), "validation": str(rows)},
        "method": {"name": "prefix", "num_virtual_tokens": 4},
        "preference": {"beta": 0.1},
        "train": {"packing": True, "early_stopping": {"metric": "val_f1"}},
    }


def problems(tmp_path: Path, recipe: dict[str, Any]) -> list[str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert caught.value.message == f"{path}: {len(caught.value.problems)} problems"
    return caught.value.problems


def test_the_issues_three_problems_are_all_reported(tmp_path: Path, issue_example: dict[str, Any]) -> None:
    assert problems(tmp_path, issue_example) == [
        "train.early_stopping.metric: the validation pass of task sft logs no val_f1; watch one of val_loss, "
        "val_perplexity",
        BETA,
        PACKING,
    ]


def test_tunelab_validate_reports_them_too(tmp_path: Path, issue_example: dict[str, Any]) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(issue_example), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", "validate", str(path)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())
    assert f"{path}: 3 problems" in text
    assert "train.early_stopping.metric: the validation pass of task sft logs no val_f1" in text
    assert BETA in text and PACKING in text
    assert "Traceback" not in proc.stderr + proc.stdout


def test_wrong_fields_do_not_hide_the_cross_field_problems(
    tmp_path: Path, issue_example: dict[str, Any]
) -> None:
    # Wrong values in the very sections the checks read (train, its early_stopping, data): the fields
    # that parsed are still checked, the early-stopping metric included.
    issue_example["train"] = {
        "packing": True,
        "lr": -1,
        "early_stopping": {"metric": "val_reward_margin", "patience": 0},
    }
    issue_example["data"]["sample"] = 0
    assert problems(tmp_path, issue_example) == [
        "data.sample: must be > 0, got 0",
        "train.lr: must be > 0, got -1",
        "train.early_stopping.patience: must be >= 1, got 0",
        "train.early_stopping.metric: the validation pass of task sft logs no val_reward_margin; watch one "
        "of val_loss, val_perplexity",
        BETA,
        PACKING,
    ]


def test_a_check_that_reads_a_wrong_field_is_left_out(tmp_path: Path, issue_example: dict[str, Any]) -> None:
    # The task is misspelt: every check that reads the task waits for it (preference.beta, the
    # early-stopping metric); packing with prefix does not depend on it and is still reported.
    issue_example["task"] = "sfx"
    assert problems(tmp_path, issue_example) == [
        "task: must be one of 'sft', 'classify', 'pretrain', 'preference', 'reward', 'token_classify' or "
        "'seq2seq', got 'sfx'",
        PACKING,
    ]


def test_a_method_with_a_wrong_setting_is_still_known_by_its_name(
    tmp_path: Path, issue_example: dict[str, Any]
) -> None:
    issue_example["method"] = {"name": "prefix", "num_virtual_tokens": 0, "projectoin": True}
    issue_example["train"] = {"packing": True}
    assert problems(tmp_path, issue_example) == [
        "method.num_virtual_tokens: must be > 0, got 0",
        "method.projectoin: unknown key (did you mean 'projection'?); allowed: name, num_virtual_tokens, "
        "projection",
        BETA,
        PACKING,
    ]


def test_a_missing_data_file_hides_no_other_problem(tmp_path: Path, issue_example: dict[str, Any]) -> None:
    issue_example["data"]["validation"] = str(tmp_path / "nope.jsonl")
    found = problems(tmp_path, issue_example)
    assert found[0].startswith("data.validation: file not found:") and "nope.jsonl" in found[0]
    assert found[1:] == [
        "train.early_stopping.metric: the validation pass of task sft logs no val_f1; watch one of val_loss, "
        "val_perplexity",
        BETA,
        PACKING,
    ]


def test_a_missing_training_file_does_not_hide_the_early_stopping_metric(
    tmp_path: Path, issue_example: dict[str, Any]
) -> None:
    issue_example["data"]["train"] = str(tmp_path / "missing.jsonl")  # validate's most common error
    issue_example["train"]["early_stopping"] = {"metric": "val_accuracy"}
    found = problems(tmp_path, issue_example)
    assert any(p.startswith("data.train: file not found") for p in found)
    assert (
        "train.early_stopping.metric: the validation pass of task sft logs no val_accuracy; watch one of "
        "val_loss, val_perplexity"
    ) in found
