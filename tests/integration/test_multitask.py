"""Multi-task instruction tuning, replay and continued pre-training, end to end on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import CHATS, CORPUS, VAL_CHATS, make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.errors import RecipeError
from tunelab.runner import train

GREETINGS = [
    {
        "messages": [
            {"role": "user", "content": f"Hello number {i}"},
            {"role": "assistant", "content": f"Hi {i}!"},
        ]
    }
    for i in range(12)
]


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_datasets_report_metrics_per_dataset(tmp_path: Path, tiny_llama: Path) -> None:
    bank = write_jsonl(tmp_path / "bank.jsonl", CHATS)
    bank_val = write_jsonl(tmp_path / "bank_val.jsonl", VAL_CHATS)
    greet = write_jsonl(tmp_path / "greet.jsonl", GREETINGS[:10])
    greet_val = write_jsonl(tmp_path / "greet_val.jsonl", GREETINGS[10:])
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        data={
            "train": [
                {"path": str(bank), "name": "bank", "validation": str(bank_val)},
                {"path": str(greet), "name": "greet", "validation": str(greet_val), "weight": 0.5},
            ],
            "validation": None,
        },
        train={"max_steps": 3, "log_every": 3, "eval_every": 3},
    )
    result = train(load_recipe(recipe))
    metrics = result.summary.metrics
    assert {"val_loss", "val_bank_loss", "val_greet_loss", "val_bank_perplexity"} <= set(metrics)
    assert metrics["val_bank_loss"] != metrics["val_greet_loss"]
    # The overall loss is the token-weighted mix of the two: it lies between them.
    low, high = sorted([metrics["val_bank_loss"], metrics["val_greet_loss"]])
    assert low < metrics["val_loss"] < high
    # bank: 8 rows x weight 1, greet: 10 rows x weight 0.5 -> 8/13 of the draws from bank
    assert result.summary.mix["shares_of_new_data"] == pytest.approx({"bank": 8 / 13, "greet": 5 / 13})
    rows = [json.loads(line) for line in (result.run_dir / "data" / "train.jsonl").read_text().splitlines()]
    assert {row["_dataset"] for row in rows} == {"bank", "greet"}


def test_replay_is_mixed_in_at_its_ratio(tmp_path: Path, tiny_llama: Path) -> None:
    greet = write_jsonl(tmp_path / "greet.jsonl", GREETINGS)
    general = tmp_path / "general.txt"
    general.write_text("\n".join(CORPUS * 3) + "\n", encoding="utf-8")
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        data={
            "train": [{"path": str(greet)}],
            "replay": {"path": str(general), "ratio": 0.25},
            "dedup": False,
        },
        train={"max_steps": 8, "batch_size": 4, "grad_accum": 1, "log_every": 4, "eval_every": 8},
    )
    result = train(load_recipe(recipe))
    logged = [line for line in metrics_lines(result.run_dir) if "mix/replay" in line]
    assert len(logged) == 2  # steps 4 and 8: 16 draws each
    for line in logged:
        assert line["mix/replay"] == pytest.approx(0.25, abs=0.02)
        assert line["mix/replay"] + line["mix/greet"] == pytest.approx(1.0)


def test_pretrain_trains_on_every_token_and_packs_by_default(tmp_path: Path, tiny_llama: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    held = tmp_path / "held.txt"
    held.write_text("The lazy dog sleeps.\nMy card was blocked.\n", encoding="utf-8")
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "pretrain",
        data={"train": str(corpus), "validation": str(held)},
        method={"name": "full"},
        train={"max_steps": 2, "max_seq_len": 48},
    )
    result = train(load_recipe(recipe))
    report = json.loads((result.run_dir / "data" / "report.json").read_text())
    assert report["packing"]["examples"] == len(CORPUS)
    assert report["packing"]["rows"] < len(CORPUS)  # several documents share a row
    assert {"val_loss", "val_perplexity"} <= set(result.summary.metrics)
    assert result.summary.status == "completed"


def test_multi_dataset_lists_are_refused_for_classification(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": "b"}])
    recipe = make_recipe(tmp_path, tiny_bert, "classify", data={"train": [{"path": str(data)}]})
    with pytest.raises(RecipeError, match="multi-task"):
        load_recipe(recipe)


def test_datasets_without_held_out_files_are_split_each_on_its_own(tmp_path: Path, tiny_llama: Path) -> None:
    from tunelab.data.pipeline import load_records

    bank = write_jsonl(tmp_path / "bank.jsonl", CHATS)
    greet = write_jsonl(tmp_path / "greet.jsonl", GREETINGS)
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        data={
            "train": [{"path": str(bank), "name": "bank"}, {"path": str(greet), "name": "greet"}],
            "validation": None,
            "split": {"validation": 0.25},
        },
    )
    records = load_records(load_recipe(recipe))
    per_dataset = records.report["records_per_dataset"]
    assert per_dataset["validation"] == {"bank": 2, "greet": 3}  # 25% of 8 and of 12
    assert per_dataset["train"] == {"bank": 6, "greet": 9}


def test_an_older_recipe_naming_datasets_by_task_name_still_loads(tmp_path: Path) -> None:
    # Datasets were named with `task_name` before the tag became `dataset` everywhere; a saved
    # recipe.yaml of such a run still loads, with the names where they are now.
    first, second = write_jsonl(tmp_path / "a.jsonl", CHATS), write_jsonl(tmp_path / "b.jsonl", CHATS)
    old = {
        "name": "old", "task": "sft", "model": {"name": "org/model"}, "method": {"name": "lora"},
        "data": {"train": [{"path": str(first), "task_name": "bank"}, {"path": str(second), "task_name": "greet"}]},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(old), encoding="utf-8")
    assert [source.name for source in load_recipe(path).data.sources] == ["bank", "greet"]
