"""output.trackers: a run logs to a local MLflow store through accelerate's tracker, and MLflow's own
client reads back the metrics metrics.jsonl has, the recipe as parameters and the run's end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_recipe
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.runner import train
from tunelab.runs import trackers

pytestmark = pytest.mark.slow


def test_a_run_logs_to_mlflow_and_mlflows_client_reads_it_back(tiny_llama: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    recipe = load_recipe(make_recipe(tmp_path, tiny_llama, "sft", output={
        "dir": str(tmp_path / "runs"), "trackers": ["tensorboard", "mlflow"], "tags": {"team": "nlp"}}))  # fmt: skip
    result = train(recipe)
    client = MlflowClient(tracking_uri=trackers.mlflow_uri(recipe))
    experiment = client.get_experiment_by_name(recipe.name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.tags["team"] == "nlp" and run.data.params["train.lr"] == str(recipe.train.lr)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    expected = [(line["step"], line["loss"]) for line in lines if "loss" in line]
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=1e-6)
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val] == [line["step"] for line in lines if "val_loss" in line]
    assert (result.run_dir / "tensorboard").is_dir()  # still written beside it


def test_a_missing_tracker_package_is_named_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(TunelabError, match="wandb, which is not installed") as caught:
        trackers.check_trackers(["tensorboard", "wandb"])
    assert "pip install wandb" in str(caught.value)


def test_an_interrupted_run_is_killed_in_mlflow_and_its_resume_continues_the_same_run(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from tests.conftest import crash_at_checkpoint

    recipe = load_recipe(make_recipe(tmp_path, tiny_llama, "sft", output={
        "dir": str(tmp_path / "runs"), "trackers": ["mlflow"]}))  # fmt: skip
    crash_at_checkpoint(monkeypatch, KeyboardInterrupt(), at_step=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.undo()
    client = MlflowClient(tracking_uri=trackers.mlflow_uri(recipe))
    experiment = client.get_experiment_by_name(recipe.name)
    (interrupted,) = client.search_runs([experiment.experiment_id])
    assert interrupted.info.status == "KILLED"
    run_dir = next((tmp_path / "runs").glob("tiny-sft-*"))
    assert not (run_dir / "tensorboard").exists()  # only the trackers asked for
    train(recipe, resume=run_dir)
    (resumed,) = client.search_runs([experiment.experiment_id])  # the same MLflow run, continued
    assert resumed.info.run_id == interrupted.info.run_id and resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")] == [1, 2, 3, 4]
