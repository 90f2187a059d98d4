"""DDP on CPU (gloo) through `tunelab train --nproc 2`: two processes train like one, because the loss
is normalised across processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import as_if_from_a_terminal, exact, make_recipe, only_run_dir, train_in_processes
from tunelab.config import load_recipe
from tunelab.runner import train
from tunelab.runs.rundir import read_summary


@exact
@pytest.mark.slow
def test_two_processes_of_batch_four_equal_one_process_of_batch_eight(
    tmp_path: Path, tiny_llama: Path
) -> None:
    # Process r takes examples r, r+2, ... of each epoch's permutation, so with batch 4 per process
    # every optimizer step sees the same examples as a single process with batch 8.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    settings = {"grad_accum": 1, "epochs": 3}
    single = train(
        load_recipe(make_recipe(tmp_path / "one", tiny_llama, "sft", train={**settings, "batch_size": 8}))
    )
    recipe = make_recipe(tmp_path / "two", tiny_llama, "sft", train={**settings, "batch_size": 4})
    proc = train_in_processes(recipe, 2)
    assert "launching 2 processes (ddp)" in proc.stdout + proc.stderr
    run_dir = only_run_dir(tmp_path / "two")  # one, not one per process
    summary = read_summary(run_dir)
    assert summary.status == "completed"
    assert summary.steps == single.summary.steps and summary.tokens == single.summary.tokens
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert {p.name for p in last.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }

    expected = load_file(single.run_dir / "final" / "adapter_model.safetensors")
    got = load_file(run_dir / "final" / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-4, rtol=0, msg=name)
    assert summary.metrics["val_loss"] == pytest.approx(single.summary.metrics["val_loss"], abs=1e-4)
    # Adam hides a constant gradient scale from the weights; the gradient norm does not.
    assert grad_norms(run_dir) == pytest.approx(grad_norms(single.run_dir), abs=1e-4)
    assert summary.steps == 3


def grad_norms(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["grad_norm"] for line in lines if "grad_norm" in line]


def test_sharded_strategies_are_refused_without_a_gpu(tmp_path: Path, tiny_llama: Path) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only refusal")
    recipe = make_recipe(tmp_path, tiny_llama, "sft")
    result = CliRunner().invoke(
        app, ["train", str(recipe), "--nproc", "2", "--set", "train.distributed=fsdp"]
    )
    assert result.exit_code == 1
    assert "train.distributed: fsdp shards the model across GPUs; no CUDA GPU is visible" in result.output
    assert not (tmp_path / "runs").exists()  # refused before any process or run folder


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_under_the_launcher_checkpoints_every_process_at_one_step(
    tmp_path: Path, tiny_llama: Path
) -> None:
    settings = {"epochs": 200, "batch_size": 2, "grad_accum": 1, "save_every": 1000, "eval_every": 1000}
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train=settings)
    # A terminal sends Ctrl-C to its foreground process group: here, tunelab and the launcher it starts.
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(recipe), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=as_if_from_a_terminal)  # fmt: skip
    deadline = time.time() + 240
    logs = tmp_path / "runs"
    while not any(len(p.read_text().splitlines()) >= 3 for p in logs.glob("*/metrics.jsonl")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    run_dir = only_run_dir(tmp_path)
    stopped = read_summary(run_dir)
    assert stopped.status == "interrupted" and 3 <= stopped.steps < 400, stderr
    assert stopped.last_checkpoint == f"step-{stopped.steps:08d}"
    checkpoint = run_dir / "checkpoints" / stopped.last_checkpoint
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    assert stderr.count("Ctrl-C: every process finishes this step") == 1  # the main process speaks
    assert f"--nproc 2 --resume {run_dir}" in stderr
