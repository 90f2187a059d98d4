"""`train` end to end on tiny offline models: a complete run folder, exact resume, clean failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import VAL_LABELED, exact, make_recipe
from tunelab.config import load_recipe
from tunelab.runner import train
from tunelab.runs.rundir import read_summary
from tunelab.training import checkpoint


def run(recipe_path: Path, *overrides: str, resume: Path | None = None):
    return train(load_recipe(recipe_path, list(overrides)), resume=resume)


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_lora_leaves_a_complete_run_folder(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"keep_last": 1})
    result = run(recipe)
    run_dir, summary = result.run_dir, result.summary

    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("tiny-sft-")
    assert summary.status == "completed"
    assert summary.steps == summary.total_steps == 4  # 8 examples / (2 x 2) per step x 2 epochs
    assert summary.tokens > 0 and summary.wall_s > 0 and summary.peak_mem_mb > 0
    assert set(summary.metrics) >= {"train_loss_last", "val_loss", "val_perplexity"}
    assert read_summary(run_dir) == summary

    assert load_recipe(run_dir / "recipe.yaml") == load_recipe(recipe)  # the resolved recipe is saved
    lines = metrics_lines(run_dir)
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == [1, 2, 3, 4]
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    assert [line["step"] for line in lines if "val_loss" in line] == [2, 4]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")] == ["step-00000004"]

    final = run_dir / "final"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tunelab.json"} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / "tunelab.json").read_text())["chat_template"] == "chatml"
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)


def scores_of_saved_classifier(final: Path, rows: list[dict]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the classifier saved in `final` on `rows`, scored one row at a
    time with plain transformers: no tunelab code, no batching or padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    label_ids = json.loads((final / "labels.json").read_text())
    correct, losses = 0, []
    with torch.no_grad():
        for row in rows:
            logits = model(**tokenizer(row["text"], return_tensors="pt")).logits
            label = torch.tensor([label_ids[row["label"]]])
            correct += int(logits.argmax(-1).item() == label.item())
            losses.append(torch.nn.functional.cross_entropy(logits, label).item())
    return correct / len(rows), sum(losses) / len(losses)


@exact
def test_classify_freeze_saves_weights_and_label_map(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "freeze", "k": 1})
    summary = run(recipe).summary

    final = Path(summary.run_dir) / "final"
    assert summary.status == "completed"
    assert json.loads((final / "labels.json").read_text()) == {"balance": 0, "card": 1, "transfer": 2}
    config = json.loads((final / "config.json").read_text())
    assert config["id2label"] == {"0": "balance", "1": "card", "2": "transfer"}
    # The reported scores are the saved model's on the validation rows: the weights and the label map
    # saved are the ones that were scored. The loss tells the trained weights from the untrained ones.
    accuracy, loss = scores_of_saved_classifier(final, VAL_LABELED)  # make_recipe's validation rows
    assert summary.metrics["val_accuracy"] == accuracy == 0.25  # fp32, seed 7: all 4 rows called transfer
    assert summary.metrics["val_loss"] == pytest.approx(loss, abs=1e-5)
    assert summary.metrics["val_loss"] != pytest.approx(summary.before_training["val_loss"], abs=1e-3)


def test_test_split_is_scored_before_and_after_training(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "full"}, train={"epochs": 4})
    test_file = tmp_path / "val.jsonl"  # the fixture's validation rows double as a test split here
    summary = run(recipe, f"data.test={test_file}").summary
    assert set(summary.before_training) == {"test_loss", "test_accuracy"}
    assert {"test_loss", "test_accuracy"} <= set(summary.metrics)
    # Scored twice, on the same rows: before (untrained head) and after training moved the weights.
    assert summary.metrics["test_loss"] != summary.before_training["test_loss"]


def test_without_a_test_split_validation_is_scored_before_and_after(tmp_path: Path, tiny_bert: Path) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "full"}, train={"epochs": 4})
    result = CliRunner().invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    summary = read_summary(next((tmp_path / "runs").glob("*/summary.json")).parent)
    assert summary.before_training_split == "validation"
    assert set(summary.before_training) == {"val_loss", "val_accuracy"}
    before, after = summary.before_training["val_loss"], summary.metrics["val_loss"]
    assert before != after
    assert f"val_loss: {before:.4f} before training -> {after:.4f} after" in result.output


class SimulatedCrash(Exception):
    pass


@exact
@pytest.mark.parametrize(
    ("task", "method", "weights_file"),
    [
        ("sft", {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1}, "adapter_model.safetensors"),
        ("classify", {"name": "full"}, "model.safetensors"),
    ],
)
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    tmp_path: Path,
    tiny_llama: Path,
    tiny_bert: Path,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
    method: dict,
    weights_file: str,
) -> None:
    # 6 steps of 2 micro-batches over 4 micro-batches per epoch: the step-3 checkpoint is mid-epoch.
    # Dropout is on (LoRA dropout, BERT's hidden dropout), so the RNG state must be restored too.
    model = tiny_llama if task == "sft" else tiny_bert
    overrides = {"epochs": 3, "save_every": 3, "eval_every": 2}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run(make_recipe(tmp_path / "a", model, task, method=method, train=overrides))
    recipe = make_recipe(tmp_path / "b", model, task, method=method, train=overrides)

    real_save = checkpoint.save_checkpoint

    def crash_after_step_3(accelerator, root, step, keep_last):
        path = real_save(accelerator, root, step, keep_last)
        if step == 3:
            (root / ".tmp-step-00000004").mkdir()  # and a half-written checkpoint left behind
            raise SimulatedCrash("power cut")
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", crash_after_step_3)
    with pytest.raises(SimulatedCrash):
        run(recipe)
    (run_dir,) = [p for p in (tmp_path / "b" / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    crashed = read_summary(run_dir)
    assert crashed.status == "failed" and crashed.error == "power cut"
    assert not (run_dir / "final").exists()
    assert [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")] == ["step-00000003"]

    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    resumed = run(recipe, resume=run_dir)

    assert resumed.summary.status == "completed" and resumed.summary.steps == 6
    assert resumed.summary.tokens == straight.summary.tokens
    expected = load_file(straight.run_dir / "final" / weights_file)
    got = load_file(run_dir / "final" / weights_file)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)
    # metrics.jsonl holds each step once: the crashed run's lines after its checkpoint were dropped.
    steps = [line["step"] for line in metrics_lines(run_dir) if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert resumed.summary.metrics["val_loss"] == pytest.approx(
        straight.summary.metrics["val_loss"], abs=1e-6
    )


def test_resume_refuses_a_completed_run(tmp_path: Path, tiny_bert: Path) -> None:
    from tunelab.errors import TunelabError

    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 1})
    done = run(recipe)
    with pytest.raises(TunelabError, match="already completed"):
        run(recipe, resume=done.run_dir)
