"""DDP on CPU (gloo): two processes train like one, because the loss is normalised across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_recipe
from tunelab.config import load_recipe
from tunelab.runner import train


@pytest.mark.slow
def test_two_processes_of_batch_one_equal_one_process_of_batch_two(tmp_path: Path, tiny_llama: Path) -> None:
    # Process r takes examples r, r+2, ... of each epoch's permutation, so with batch 1 per process
    # every optimizer step sees the same examples as a single process with batch 2.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = train(load_recipe(make_recipe(tmp_path / "one", tiny_llama, "sft", train={"batch_size": 2})))
    recipe = make_recipe(tmp_path / "two", tiny_llama, "sft", train={"batch_size": 1})
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "tunelab", "train", str(recipe)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run_dir,) = [
        p for p in (tmp_path / "two" / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")
    ]  # one, not one per process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["steps"] == single.summary["steps"] and summary["tokens"] == single.summary["tokens"]
    last = sorted((run_dir / "checkpoints").iterdir())[-1]
    assert {p.name for p in last.glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }

    expected = load_file(single.run_dir / "final" / "adapter_model.safetensors")
    got = load_file(run_dir / "final" / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=0, msg=name)
    assert summary["metrics"]["val_loss"] == pytest.approx(single.summary["metrics"]["val_loss"], abs=1e-5)
    # Adam hides a constant gradient scale from the weights; the gradient norm does not.
    assert grad_norms(run_dir) == pytest.approx(grad_norms(single.run_dir), abs=1e-5)


def grad_norms(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["grad_norm"] for line in lines if "grad_norm" in line]
