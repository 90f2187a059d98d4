"""The exactness invariants again, trained in bf16 (`train.precision: bf16`), with the bf16 tolerances
derived in tests/conftest.py (BF16_U). Native bf16 where the CPU has it (AVX512-BF16, AMX), torch's
software bf16 elsewhere: either way this is the path `precision: auto` takes on such a CPU, so it is
tested here rather than skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.conftest import (
    BF16_U,
    CHATS,
    crash_at_checkpoint,
    make_recipe,
    only_run_dir,
    train_in_processes,
    write_jsonl,
)
from tests.integration.test_method_runs import METHODS
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.data.formats import load_split
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy, collate, tokenize_chats
from tunelab.evaluation.target import evaluate_file, load_target
from tunelab.runner import TrainResult, train
from tunelab.runs.rundir import read_summary
from tunelab.training.loop import accumulate_gradients
from tunelab.training.objectives import CAUSAL_LM_OBJECTIVE
from tunelab.training.precision import make_accelerator

BF16 = {"precision": "bf16"}


def close(got: float, expected: float) -> bool:
    """Scalar summaries: one bf16 rounding's worth, relative."""
    return abs(got - expected) <= BF16_U * abs(expected)


def relative_norm(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).norm() / expected.float().norm())


def logged(run: TrainResult, key: str) -> list[float]:
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


def assert_trains_alike(got: TrainResult, expected: TrainResult) -> None:
    """Same step losses, gradient norms and final validation loss, to bf16's tolerance."""
    assert got.summary.precision["compute"] == "bf16"
    for key in ("loss", "grad_norm"):
        pairs = list(zip(logged(got, key), logged(expected, key), strict=True))
        assert pairs and all(close(a, b) for a, b in pairs), (key, pairs)
    assert close(got.summary.metrics["val_loss"], expected.summary.metrics["val_loss"])


# ---------------------------------------------------------------------------------------------
# accumulation, packing, resume, several processes


def bf16_gradients(model_dir: Path, micro_batches: list[dict], per_batch_mean: bool = False) -> dict:
    torch.manual_seed(0)
    accelerator = make_accelerator("bf16")
    model = accelerator.prepare_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    if per_batch_mean:  # the common mistake: each micro-batch's own mean, averaged
        objective = CAUSAL_LM_OBJECTIVE
        for batch in micro_batches:
            out = objective.loss(model, batch)
            (out.loss_sum / objective.count_targets(batch) / len(micro_batches)).backward()
    else:
        accumulate_gradients(model, CAUSAL_LM_OBJECTIVE, micro_batches, accelerator)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_bf16_micro_batches_give_the_full_batch_gradients(
    tiny_llama: Path, tmp_path: Path, tokenizer: Any
) -> None:
    ensure_chat_template(tokenizer)
    chats = load_split(write_jsonl(tmp_path / "c.jsonl", CHATS)).records
    examples, _ = tokenize_chats(tokenizer, chats, LengthPolicy(max_seq_len=64))
    micro = [collate(examples[i : i + 2], 1) for i in range(0, 8, 2)]
    full = bf16_gradients(tiny_llama, [collate(examples, 1)])
    accumulated = bf16_gradients(tiny_llama, micro)
    assert full.keys() == accumulated.keys() and full
    worst = max(relative_norm(accumulated[name], grad) for name, grad in full.items())
    assert worst <= 2 * BF16_U, worst
    # The tolerance still tells the mistake apart: micro-batches hold different numbers of targets.
    mistaken = bf16_gradients(tiny_llama, micro, per_batch_mean=True)
    assert max(relative_norm(mistaken[name], grad) for name, grad in full.items()) > 10 * BF16_U


def test_bf16_packed_training_trains_like_unpacked(tmp_path: Path, tiny_llama: Path) -> None:
    runs = {}
    for packing in (False, True):
        folder = tmp_path / str(packing)
        folder.mkdir()
        settings = {**BF16, "batch_size": 8, "grad_accum": 1, "max_steps": 3, "eval_every": 3,
                    "packing": packing, "max_seq_len": 128}  # fmt: skip
        runs[packing] = train(load_recipe(make_recipe(folder, tiny_llama, "sft", train=settings)))
    assert_trains_alike(runs[True], runs[False])


class SimulatedCrash(RuntimeError):
    pass


def test_bf16_resume_after_a_crash_equals_an_uninterrupted_run(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resume replays the very same roundings (the bf16 base is reloaded, the float32 masters and the
    # RNG come from the checkpoint), so here bf16 is held to float32's tolerance.
    settings = {**BF16, "epochs": 3, "save_every": 3, "eval_every": 2}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = train(load_recipe(make_recipe(tmp_path / "a", tiny_llama, "sft", train=settings)))
    recipe = load_recipe(make_recipe(tmp_path / "b", tiny_llama, "sft", train=settings))
    crash_at_checkpoint(monkeypatch, SimulatedCrash("power cut"), at_step=3)
    with pytest.raises(SimulatedCrash):
        train(recipe)
    run_dir = only_run_dir(tmp_path / "b")
    monkeypatch.undo()
    resumed = train(recipe, resume=run_dir)
    expected = load_file(straight.run_dir / "final" / "adapter_model.safetensors")
    got = load_file(run_dir / "final" / "adapter_model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)
    assert resumed.summary.metrics["val_loss"] == pytest.approx(
        straight.summary.metrics["val_loss"], abs=1e-6
    )


@pytest.mark.slow
def test_bf16_two_processes_of_batch_four_train_like_one_of_batch_eight(
    tmp_path: Path, tiny_llama: Path
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    settings = {**BF16, "grad_accum": 1, "epochs": 3}
    single = train(
        load_recipe(make_recipe(tmp_path / "one", tiny_llama, "sft", train={**settings, "batch_size": 8}))
    )
    train_in_processes(
        make_recipe(tmp_path / "two", tiny_llama, "sft", train={**settings, "batch_size": 4}), 2
    )
    run_dir = only_run_dir(tmp_path / "two")
    summary = read_summary(run_dir)
    assert_trains_alike(TrainResult(run_dir=run_dir, summary=summary), single)


# ---------------------------------------------------------------------------------------------
# a run's numbers from its folder: every method, restored in the precision it trained in


@pytest.mark.parametrize("task", ["sft", "classify"])
@pytest.mark.parametrize("method", ["lora", "full", *METHODS])
def test_bf16_final_folder_reproduces_the_last_validation_loss(
    method: str, task: str, tmp_path: Path, tiny_llama: Path, tiny_bert: Path
) -> None:
    model = tiny_llama if task == "sft" else tiny_bert
    chosen = {"lora": {"name": "lora", "r": 2, "alpha": 4}, "full": {"name": "full"}}.get(method) or METHODS[
        method
    ]
    settings = {**BF16, "max_steps": 2, "eval_every": 2, "lr": 5e-2}
    run = train(load_recipe(make_recipe(tmp_path, model, task, method=chosen, train=settings)))
    info = json.loads((run.run_dir / "final" / "tunelab.json").read_text())
    weights = "float32" if method == "full" else "bfloat16"
    assert info["precision"] == {"compute": "bf16", "weights": weights}
    scored = evaluate_file(load_target(str(run.run_dir)), str(tmp_path / "val.jsonl"))  # the run's settings
    assert close(scored["metrics"]["eval_loss"], run.summary.metrics["val_loss"])


def test_bf16_eval_command_restores_the_runs_precision_unless_told_otherwise(
    tmp_path: Path, tiny_bert: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={**BF16, "max_steps": 3, "eval_every": 3})
    run = train(load_recipe(recipe))
    expected = run.summary.metrics["val_loss"]
    scores = {}
    for precision in ("trained", "fp32"):
        out = tmp_path / f"{precision}.json"
        result = CliRunner().invoke(
            app, ["eval", str(run.run_dir), "--data", str(tmp_path / "val.jsonl"), "--precision", precision,
                  "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        scores[precision] = json.loads(out.read_text())["metrics"]["eval_loss"]
    assert close(scores["trained"], expected)
    # In float32 the same weights score differently: the precision restored is the run's, not fp32's.
    assert abs(scores["trained"] - expected) < abs(scores["fp32"] - expected)
    bad = CliRunner().invoke(app, ["eval", str(run.run_dir), "--data", str(tmp_path / "val.jsonl"),
                                   "--precision", "fp8"])  # fmt: skip
    assert bad.exit_code != 0 and "precision 'fp8': choose trained, fp32, bf16, fp16" in bad.output
