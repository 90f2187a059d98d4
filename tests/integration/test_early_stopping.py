"""Early stopping on any metric a task's validation pass logs: a run that stops on a higher-is-better
metric at the step its patience gives, and the table of directions against what each task really logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHATS, LABELED, VAL_CHATS, VAL_LABELED, make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.config.directions import BETTER, table_name
from tunelab.config.validation_metrics import validation_metrics
from tunelab.runner import train

PAIRS = [
    {
        "prompt": f"Can you help me with request {i}?",
        "chosen": f"Yes, happy to help with {i}.",
        "rejected": "No.",
    }
    for i in range(8)
]
# Held-out pairs that prefer what training learns to disprefer: as the model ranks "Yes, ..." above "No."
# ever more surely, these pairs' margin falls at every validation pass.
REVERSED = [
    {"prompt": "Would you walk the dog?", "chosen": "No.", "rejected": "Yes, happy to walk the dog."},
    {"prompt": "Please water the plants.", "chosen": "No.", "rejected": "Yes, happy to water them."},
]
FAST = {"max_steps": 1, "eval_every": 1, "save_every": 100, "batch_size": 2, "grad_accum": 1}


def validation_lines(run_dir: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if any(key.startswith("val_") for key in line)]


def test_a_reward_model_stops_when_its_margin_stops_rising(tmp_path: Path, tiny_llama: Path) -> None:
    patience, every = 2, 2
    recipe = make_recipe(
        tmp_path, tiny_llama, "reward",
        data={"train": str(write_jsonl(tmp_path / "pairs.jsonl", PAIRS)),
              "validation": str(write_jsonl(tmp_path / "reversed.jsonl", REVERSED))},
        train={"max_steps": 12, "batch_size": 2, "grad_accum": 1, "eval_every": every, "save_every": 100,
               "early_stopping": {"metric": "val_reward_margin", "patience": patience}},
        eval={"baselines": []},
    )  # fmt: skip
    result = train(load_recipe(recipe))

    margins = [line["val_reward_margin"] for line in validation_lines(result.run_dir) if line["step"] > 0]
    # Higher is better: the first pass (step 2) is the best, the next `patience` passes do not beat it,
    # so the run stops at step 2 + 2 x 2. Read as a loss (lower is better), each pass would improve on the
    # last and the run would go on to step 12.
    assert margins == sorted(margins, reverse=True) and len(set(margins)) == len(margins)
    assert result.summary.stopped_early is True
    assert result.summary.steps == every * (1 + patience) == 6
    assert len(margins) == 1 + patience


def _sft(tmp_path: Path, tiny_llama: Path) -> Path:
    return make_recipe(tmp_path, tiny_llama, "sft", train=FAST, eval={"baselines": []})


def test_sft_stops_on_the_exact_match_of_answers_generated_at_each_validation_pass(
    tmp_path: Path, tiny_llama: Path
) -> None:
    recipe = load_recipe(
        make_recipe(
            tmp_path, tiny_llama, "sft",
            train={"max_steps": 10, "eval_every": 1, "save_every": 100, "batch_size": 2, "grad_accum": 1,
                   "early_stopping": {"metric": "val_exact_match", "patience": 2}},
            eval={"baselines": [], "metrics": ["exact_match", "rouge"], "max_new_tokens": 4},
        )
    )  # fmt: skip
    result = train(recipe)
    passes = [line for line in validation_lines(result.run_dir) if line["step"] > 0]
    # A tiny random model answers none exactly: the first pass is the best and the next two do not beat it.
    assert [line["val_exact_match"] for line in passes] == [0.0, 0.0, 0.0]
    assert all(0 <= line["val_rougeL"] <= 1 for line in passes)
    assert result.summary.stopped_early and result.summary.steps == 3
    assert set(passes[0]) - {"step"} == set(validation_metrics(recipe))


def _sft_two_datasets(tmp_path: Path, tiny_llama: Path) -> Path:
    sources = [
        {"path": str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), "name": name,
         "validation": str(write_jsonl(tmp_path / f"{name}-val.jsonl", held_out))}
        for name, rows, held_out in (("chat", CHATS[:4], VAL_CHATS[:2]), ("faq", CHATS[4:], VAL_CHATS[2:]))
    ]  # fmt: skip
    return make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        data={"train": sources, "validation": None},
        train=FAST,
        eval={"baselines": []},
    )


def _pretrain(tmp_path: Path, tiny_llama: Path) -> Path:
    texts = [{"text": row["text"]} for row in LABELED]
    held_out = [{"text": row["text"]} for row in VAL_LABELED]
    data = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", texts)),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", held_out)),
    }
    return make_recipe(tmp_path, tiny_llama, "pretrain", data=data, train=FAST, eval={"baselines": []})


def _classify(tmp_path: Path, tiny_bert: Path) -> Path:
    return make_recipe(tmp_path, tiny_bert, "classify", train=FAST, eval={"baselines": []})


def _token_classify(tmp_path: Path, tiny_bert: Path) -> Path:
    rows = [
        {"tokens": ["Anna", "went", "to", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Tom", "lives", "in", "Rome"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["in", "Oslo", "Eva", "smiled"], "tags": ["O", "B-LOC", "B-PER", "O"]},
        {"tokens": ["Ben", "left", "Berlin"], "tags": ["B-PER", "O", "B-LOC"]},
    ]
    data = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows[:3])),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows[3:])),
    }
    return make_recipe(tmp_path, tiny_bert, "token_classify", data=data, train=FAST, eval={"baselines": []})


def _pairs(task: str, objective: str | None = None) -> Any:
    def recipe(tmp_path: Path, tiny_llama: Path) -> Path:
        data = {
            "train": str(write_jsonl(tmp_path / "p.jsonl", PAIRS)),
            "validation": str(write_jsonl(tmp_path / "v.jsonl", REVERSED)),
        }
        loss = {"preference": {"objective": objective}} if objective else {}
        return make_recipe(tmp_path, tiny_llama, task, data=data, train=FAST, eval={"baselines": []}, **loss)

    return recipe


def _seq2seq(tmp_path: Path, tiny_t5: Path) -> Path:
    rows = [{"prompt": f"Translate {i}", "completion": f"Uebersetze {i}"} for i in range(6)]
    data = {
        "train": str(write_jsonl(tmp_path / "t.jsonl", rows[:4])),
        "validation": str(write_jsonl(tmp_path / "v.jsonl", rows[4:])),
    }
    return make_recipe(tmp_path, tiny_t5, "seq2seq", data=data, train=FAST, eval={"baselines": []})


CASES = {
    "sft": (_sft, "tiny_llama"),
    "sft, two datasets": (_sft_two_datasets, "tiny_llama"),
    "pretrain": (_pretrain, "tiny_llama"),
    "classify": (_classify, "tiny_bert"),
    "token_classify": (_token_classify, "tiny_bert"),
    "reward": (_pairs("reward"), "tiny_llama"),
    "preference dpo": (_pairs("preference", "dpo"), "tiny_llama"),
    "preference kto": (_pairs("preference", "kto"), "tiny_llama"),
    "seq2seq": (_seq2seq, "tiny_t5"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_table_names_every_metric_each_validation_pass_logs(
    case: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    build, model = CASES[case]
    recipe = load_recipe(build(tmp_path, request.getfixturevalue(model)))
    result = train(recipe)

    logged = {key for line in validation_lines(result.run_dir) for key in line if key.startswith("val_")}
    # What the recipe check allows early stopping to watch is what the validation pass logs, exactly...
    assert logged == set(validation_metrics(recipe))
    # ... and each has a row in the one table of directions (None: a diagnostic, never watched).
    assert all(table_name(key) in BETTER for key in logged)
