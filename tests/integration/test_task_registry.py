"""A task registered from this file alone: it validates, trains, is scored after training, restores and
exports, with no other file edited. What `tunelab.tasks.register_task` promises a plugin. The task here
regresses a number from text: labelled rows whose label is a number, a one-output head, a squared-error
loss, and the mean absolute error on the held-out split after training."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.conftest import make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.data.tokenize import LengthPolicy, TokenizeStats, collate
from tunelab.errors import RecipeError
from tunelab.evaluation.context import TaskContext
from tunelab.evaluation.scoring import split_prefix
from tunelab.tasks.registry import SCALAR_SCORE, TaskSpec, register_task, task_names, unregister_task
from tunelab.training.batch import Batch, model_inputs
from tunelab.training.objectives import Objective, Output

ROWS = [{"text": f"the parcel weighs {n} kilos", "label": str(n / 10)} for n in range(1, 13)]


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: LengthPolicy, recipe: Any) -> Any:
    stats = TokenizeStats(examples=len(records))
    encoded = [
        tokenizer(r.text, truncation=True, max_length=policy.max_seq_len)["input_ids"] for r in records
    ]
    return [
        {"input_ids": ids, "target": float(r.label)} for ids, r in zip(encoded, records, strict=True)
    ], stats


def collate_targets(examples: list[dict[str, Any]], pad_token_id: int) -> Batch:
    batch = collate([{"input_ids": e["input_ids"]} for e in examples], pad_token_id)
    batch["labels"] = torch.tensor([e["target"] for e in examples])
    return batch


def squared_error(model: Any, batch: Batch) -> Output:
    scores = model(**model_inputs(batch)).logits[:, 0].float()
    return Output(loss_sum=((scores - batch["labels"]) ** 2).sum(), logits=scores)


def objective(recipe: Any, model: Any, class_weights: Any) -> Objective:
    return Objective(loss=squared_error, count_targets=lambda batch: int(batch["labels"].numel()))


def mean_absolute_error(context: TaskContext, metrics: dict[str, Any]) -> dict[str, Any]:
    split = context.split
    assert split is not None
    batch = collate_targets(context.data.splits[split], context.pad_id)
    context.model.eval()  # no dropout: the scores the exported model gives
    with torch.no_grad():
        scores = context.model(**model_inputs(batch)).logits[:, 0].float()
    mae = float((scores - batch["labels"]).abs().mean())
    metrics[f"{split_prefix(split)}_mae"] = mae
    return {"regression": {"split": split, "mae": mae, "rows": len(scores)}}


@pytest.fixture
def regress() -> Iterator[None]:
    register_task(
        TaskSpec(
            name="regress",
            head=SCALAR_SCORE,
            record_kinds=("labeled",),
            tokenize=tokenize,
            collate=collate_targets,
            objective=objective,
            main_metrics=("mae", "loss"),
            after_training=mean_absolute_error,
        )
    )
    yield
    unregister_task("regress")


def _recipe(tmp_path: Path, model: Path, **train: Any) -> Path:
    data = {
        "train": str(write_jsonl(tmp_path / "weights-train.jsonl", ROWS[:8])),
        "validation": str(write_jsonl(tmp_path / "weights-val.jsonl", ROWS[8:])),
    }
    settings = {"max_steps": 6, "lr": 5e-2, "batch_size": 4, "grad_accum": 1, "eval_every": 3, **train}
    return make_recipe(tmp_path, model, "regress", data=data, method={"name": "full"}, train=settings)


def test_a_registered_task_validates_trains_scores_restores_and_exports(
    regress: None, tmp_path: Path, tiny_bert: Path
) -> None:
    from tunelab.export import export_run
    from tunelab.models.restore import load_trained
    from tunelab.runner import train

    assert task_names()[-1] == "regress"
    recipe = load_recipe(_recipe(tmp_path, tiny_bert))
    result = train(recipe)

    # Trained by its own loss: the squared error on the validation rows fell, and the loop logged it.
    summary = result.summary
    assert summary.status == "completed" and summary.steps == 6
    assert summary.metrics["val_loss"] < summary.before_training["val_loss"]
    # Scored after training by its own hook: eval.json and the run's metrics hold the error.
    scored = json.loads((result.run_dir / "eval.json").read_text())["regression"]
    assert scored["split"] == "validation" and scored["rows"] == 4
    assert summary.metrics["val_mae"] == pytest.approx(scored["mae"])

    # Restored with its head (one output) and exported; plain transformers loads the export.
    trained = load_trained(result.run_dir)
    assert trained.task == "regress" and not trained.generative
    out = export_run(result.run_dir, tmp_path / "export", merge=True)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card
    exported = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported.config.num_labels == 1
    batch = tokenizer([row["text"] for row in ROWS[8:]], padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = exported(**batch).logits[:, 0]
        restored = trained.model(**batch).logits[:, 0].float()
    torch.testing.assert_close(plain, restored, atol=1e-5, rtol=0)
    mae = float((plain - torch.tensor([float(row["label"]) for row in ROWS[8:]])).abs().mean())
    assert mae == pytest.approx(scored["mae"], abs=1e-5)


def test_an_unknown_task_is_named_with_the_registered_ones(
    regress: None, tmp_path: Path, tiny_bert: Path
) -> None:
    path = _recipe(tmp_path, tiny_bert)
    with pytest.raises(RecipeError) as refused:
        load_recipe(path, ["task=regres"])
    assert (
        "task: must be one of 'sft', 'classify', 'pretrain', 'preference', 'reward', 'token_classify', "
        "'seq2seq' or 'regress', got 'regres'"
    ) in refused.value.problems


def test_the_traits_of_a_registered_task_reach_the_checks(
    regress: None, tmp_path: Path, tiny_bert: Path
) -> None:
    with pytest.raises(RecipeError) as refused:
        load_recipe(_recipe(tmp_path, tiny_bert), ["eval.metrics=[rouge]", "train.class_weights=auto"])
    assert refused.value.problems == [
        "eval.metrics: generated answers are scored for task sft and seq2seq; task regress reports its own "
        "metrics",
        "train.class_weights: applies to task: classify only",
    ]
