"""The dashboard's scores: each task's main metric in the runs list (registry.main_metric), and the run
page's table of the fine-tuned scores beside the baselines (pages_runs.score_table), from run folders
written as the runner writes them (summary.json, the registry row)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tunelab.runs import registry
from tunelab.runs.registry import list_runs, main_metric, record_run
from tunelab.runs.rundir import write_summary
from tunelab.runs.summary import RunSummary
from tunelab.serving.dashboard.pages_runs import score_table
from tunelab.tasks.registry import task_names, task_spec

# Each task's scores as its run records them (test split, else validation), and the main one.
CASES = {
    "sft with eval.metrics": ("sft", {"test_loss": 1.1, "test_rouge1": 0.5, "test_rougeL": 0.4,
                                      "test_exact_match": 0.25}, ("test_exact_match", 0.25)),
    "sft, rouge only": ("sft", {"test_loss": 1.1, "test_rougeL": 0.4}, ("test_rougeL", 0.4)),
    "sft, eval.metrics on validation": ("sft", {"val_loss": 1.3, "val_exact_match": 0.5},
                                        ("val_exact_match", 0.5)),
    "sft without eval.metrics": ("sft", {"train_loss_last": 0.9, "val_loss": 1.3, "test_loss": 1.2,
                                         "test_perplexity": 3.3}, ("test_loss", 1.2)),
    "pretrain": ("pretrain", {"val_loss": 2.0, "val_perplexity": 7.39}, ("val_perplexity", 7.39)),
    "classify": ("classify", {"test_loss": 0.3, "test_accuracy": 0.9, "test_macro_f1": 0.88},
                 ("test_accuracy", 0.9)),
    "token_classify": ("token_classify", {"test_loss": 0.2, "test_accuracy": 0.97, "test_entity_f1": 0.91},
                       ("test_entity_f1", 0.91)),
    "seq2seq": ("seq2seq", {"test_loss": 1.5, "test_bleu": 12.5}, ("test_bleu", 12.5)),
    "preference": ("preference", {"val_loss": 0.6, "val_reward_accuracy": 0.75, "val_reward_margin": 0.2},
                   ("val_reward_accuracy", 0.75)),
    "reward": ("reward", {"test_loss": 0.5, "test_reward_accuracy": 0.8}, ("test_reward_accuracy", 0.8)),
    "failed before any score": ("classify", {}, None),
}  # fmt: skip


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(registry, "git_commit", lambda cwd=None: None)  # no git call per recorded run
    return tmp_path


def _record(out: Path, run_id: str, **fields: Any) -> Path:
    folder = out / run_id
    summary = RunSummary(name=run_id, run_dir=str(folder), status="completed", **fields)
    folder.mkdir()
    write_summary(folder, summary)
    record_run(out, run_id=run_id, recipe_yaml="task: sft\n", data_hash=None, summary=summary)
    return folder


def test_every_task_has_a_main_metric_and_the_cases_cover_every_task() -> None:
    assert all(task_spec(task).main_metrics for task in task_names())
    assert {task for task, _, _ in CASES.values()} == set(task_names())


@pytest.mark.parametrize("case", CASES)
def test_the_main_metric_of_each_task(out: Path, case: str) -> None:
    task, metrics, expected = CASES[case]
    _record(out, "run", task=task, metrics=metrics, before_training={"test_loss": 9.0})
    (row,) = list_runs(out)
    assert main_metric(row) == expected


def test_the_table_puts_each_baseline_beside_the_fine_tuned_score(out: Path) -> None:
    baselines = {
        "zero_shot": {"val_loss": 6.02, "scored": 3, "val_exact_match": 0.0},
        "few_shot": {"val_loss": 5.5, "scored": 3, "k": 3, "note": "2 of 3 had room for fewer shots"},
    }
    folder = _record(out, "sft", task="sft", before_training={"val_loss": 6.0, "val_perplexity": 403.4},
                     baselines=baselines, metrics={"train_loss_last": 4.1, "val_loss": 4.5})  # fmt: skip
    table = score_table(list_runs(out)[0], folder)
    assert table["columns"] == ["before training", "zero-shot", "few-shot", "fine-tuned"]
    assert table["rows"] == [
        ("train_loss_last", [None, None, None, 4.1]),
        ("val_loss", [6.0, 6.02, 5.5, 4.5]),
        ("val_perplexity", [403.4, None, None, None]),
        ("val_exact_match", [None, 0.0, None, None]),
    ]
    assert table["notes"] == ["few-shot: 2 of 3 had room for fewer shots"]


def test_a_taggers_model_free_baselines_are_columns_too(out: Path) -> None:
    about = {"all_O": "every word tagged O", "majority_tag": "each word's most frequent training tag"}
    baselines = {name: {"test_entity_f1": f1, "about": about[name]} for name, f1 in
                 (("all_O", 0.0), ("majority_tag", 0.4))}  # fmt: skip
    folder = _record(out, "tagger", task="token_classify", baselines=baselines,
                     metrics={"test_entity_f1": 0.9})  # fmt: skip
    table = score_table(list_runs(out)[0], folder)
    assert table["columns"] == ["all-O", "majority-tag", "fine-tuned"]  # nothing scored before training
    assert table["rows"] == [("test_entity_f1", [0.0, 0.4, 0.9])]
    assert table["notes"] == [f"all-O: {about['all_O']}", f"majority-tag: {about['majority_tag']}"]


def test_without_its_folder_the_table_is_the_registry_rows(out: Path) -> None:
    folder = _record(out, "gone", task="classify", before_training={"test_accuracy": 0.3},
                     baselines={"zero_shot": {"test_accuracy": 0.5}}, metrics={"test_accuracy": 0.9})  # fmt: skip
    (folder / "summary.json").unlink()
    table = score_table(list_runs(out)[0], folder)
    assert table == {"columns": ["before training", "fine-tuned"], "rows": [("test_accuracy", [0.3, 0.9])],
                     "notes": []}  # fmt: skip
