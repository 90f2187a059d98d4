"""A run's records stay true through interruptions: kill -9, Ctrl-C, and resuming with changes."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import as_if_from_a_terminal, crash_at_checkpoint, make_recipe, only_run_dir
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.runner import train
from tunelab.runs.registry import compare_runs, list_runs
from tunelab.runs.rundir import read_summary
from tunelab.training.stopping import stop_on_signals

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


@pytest.fixture
def terminal_sigint() -> Iterator[None]:
    """SIGINT as a terminal's foreground process has it: raising KeyboardInterrupt. (A test run started in
    the background by a script has it ignored, and so would the training processes it starts.)"""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_first_ctrl_c_asks_for_a_stop_and_a_second_one_aborts(terminal_sigint: None) -> None:
    with stop_on_signals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()  # asked: the loop checkpoints after this step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
    with stop_on_signals(launched=True) as stop:  # under torchrun, which forwards one SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_process_that_ignores_ctrl_c_keeps_ignoring_it() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # started by nohup, or in a script's background
    try:
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop()
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.slow
def test_ctrl_c_checkpoints_where_it_stopped_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, tiny_llama: Path
) -> None:
    # save_every far beyond the run, as in the quickstart: before this fix Ctrl-C kept nothing.
    settings = {"epochs": 40, "batch_size": 2, "grad_accum": 1, "save_every": 1000, "eval_every": 1000}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recipe = make_recipe(tmp_path / "a", tiny_llama, "sft", train=settings)  # 160 steps
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(recipe)], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_if_from_a_terminal)  # fmt: skip
    deadline = time.time() + 120
    while _logged_steps(tmp_path / "a") < 3:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    run_dir = only_run_dir(tmp_path / "a")
    stopped = read_summary(run_dir)
    assert stopped.status == "interrupted" and 3 <= stopped.steps < 160
    assert stopped.last_checkpoint == f"step-{stopped.steps:08d}"  # saved at the step it stopped on
    assert (run_dir / "checkpoints" / stopped.last_checkpoint).is_dir()
    (row,) = list_runs(tmp_path / "a" / "runs")
    assert row["status"] == "interrupted" and row["steps"] == stopped.steps
    resume_line = f"tunelab train {shlex.quote(str(recipe))} --resume {shlex.quote(str(run_dir))}"
    assert f"resume with:\n  {resume_line}" in stderr

    resumed = train(load_recipe(recipe), resume=run_dir)
    straight = train(load_recipe(make_recipe(tmp_path / "b", tiny_llama, "sft", train=settings)))
    assert resumed.summary.status == "completed" and resumed.summary.steps == straight.summary.steps == 160
    expected = load_file(straight.run_dir / "final" / "adapter_model.safetensors")
    got = load_file(run_dir / "final" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)


def _logged_steps(root: Path) -> int:
    logs = list((root / "runs").glob("*/metrics.jsonl"))
    return len(logs[0].read_text(encoding="utf-8").splitlines()) if logs else 0


def test_runs_on_a_file_changed_in_place_differ_in_compare_by_its_content(
    tmp_path: Path, tiny_bert: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"epochs": 1})
    first = train(load_recipe(recipe))
    data = tmp_path / "train.jsonl"
    rows = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")  # the same path, one row fewer
    second = train(load_recipe(recipe))

    before, after = read_summary(first.run_dir).data_files, read_summary(second.run_dir).data_files
    assert set(before) == {"data.train", "data.validation"}
    assert before["data.validation"] == after["data.validation"]
    assert before["data.train"] != after["data.train"]
    ids = [first.run_dir.name, second.run_dir.name]
    differences = compare_runs(tmp_path / "runs", ids)["recipe_differences"]
    assert differences == {"data.train sha256": [before["data.train"], after["data.train"]]}
    shown = runner.invoke(app, ["runs", "compare", *ids, "--dir", str(tmp_path / "runs")])
    assert shown.exit_code == 0 and "data.train sha256" in shown.output
    assert "the recipes are the same" not in shown.output
