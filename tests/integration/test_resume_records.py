"""A run's records stay true through interruptions: kill -9, Ctrl-C, and resuming with changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import crash_at_checkpoint, make_recipe, only_run_dir
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.runner import train
from tunelab.runs.registry import list_runs
from tunelab.runs.rundir import read_summary

runner = CliRunner()


def test_ctrl_c_records_an_interrupted_run_with_its_real_step_count(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 6 steps, a checkpoint every 3; Ctrl-C while the step-6 checkpoint is written.
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"epochs": 3, "save_every": 3})
    crash_at_checkpoint(monkeypatch, KeyboardInterrupt(), at_step=6)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(recipe))
    summary = read_summary(only_run_dir(tmp_path))
    assert summary.status == "interrupted" and summary.error == "interrupted"
    assert summary.steps == 6  # the real count, not the 0 it started with
    assert summary.last_checkpoint == "step-00000003"  # the last one recorded complete
    assert summary.before_training  # the before-training score was written before the first step


def test_resume_refuses_changes_that_would_make_another_run_and_records_the_safe_ones(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"epochs": 3, "save_every": 3})
    crash_at_checkpoint(monkeypatch, RuntimeError("power cut"), at_step=3)
    with pytest.raises(RuntimeError):
        train(load_recipe(recipe))
    monkeypatch.undo()
    run_dir = only_run_dir(tmp_path)

    with pytest.raises(TunelabError) as refused:
        train(load_recipe(recipe, ["train.lr=5e-3", "train.batch_size=4"]), resume=run_dir)
    message = str(refused.value)
    assert "the recipe now differs in train.batch_size, train.lr" in message
    assert "train.lr: 0.01 in the run, 0.005 now" in message
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["lr"] == 0.01  # untouched

    resumed = train(load_recipe(recipe, ["train.eval_every=3"]), resume=run_dir)
    assert resumed.summary.status == "completed"
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["eval_every"] == 3  # recorded


@pytest.mark.slow
@pytest.mark.timeout(900)  # 400 epochs in two segments: 25 s alone, past 300 s on a loaded 2-core machine
def test_after_kill_9_the_run_keeps_its_before_score_time_and_steps(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(
        tmp_path, tiny_llama, "sft", train={"epochs": 400, "save_every": 2, "eval_every": 1000}
    )
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(recipe)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/checkpoints/step-00000004")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run_dir = only_run_dir(tmp_path)
    killed = read_summary(run_dir)
    assert killed.status == "running"  # the process had no chance to say otherwise ...
    assert killed.steps >= 4 and killed.wall_s > 0 and killed.before_training
    (row,) = list_runs(tmp_path / "runs")
    assert row["status"] == "interrupted" and row["steps"] == killed.steps  # ... `runs list` does
    assert f"resume from {killed.last_checkpoint}" in row["error"]
    listed = runner.invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0 and "interrupted" in listed.output

    resumed = train(load_recipe(recipe, ["train.epochs=400"]), resume=run_dir)
    assert resumed.summary.status == "completed" and resumed.summary.segments == 2
    assert resumed.summary.before_training == killed.before_training
    assert resumed.summary.wall_s > killed.wall_s  # both segments' time, not the last one's
