"""Every method through `tunelab train`: the run's final/ rebuilds the trained model exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import exact, make_recipe
from tunelab.config import load_recipe
from tunelab.evaluation.target import DataSettings, evaluate_file, load_target
from tunelab.runner import train

METHODS = {
    "dora": {"name": "dora", "r": 2, "alpha": 4},
    "ia3": {"name": "ia3"},
    "prefix": {"name": "prefix", "num_virtual_tokens": 4},
    "prompt": {"name": "prompt", "num_virtual_tokens": 4},
    "adapter": {"name": "adapter", "reduction_factor": 4},
}


@exact
@pytest.mark.parametrize("task", ["sft", "classify"])
@pytest.mark.parametrize("method", list(METHODS))
def test_final_folder_reproduces_the_last_validation_loss(
    method: str, task: str, tmp_path: Path, tiny_llama: Path, tiny_bert: Path
) -> None:
    model = tiny_llama if task == "sft" else tiny_bert
    recipe = make_recipe(
        tmp_path, model, task, method=METHODS[method], train={"max_steps": 2, "eval_every": 2, "lr": 5e-2}
    )
    run = train(load_recipe(recipe))
    assert run.summary.status == "completed"
    # The last validation pass ran on the final weights; rebuilding them from final/ gives the same loss.
    scored = evaluate_file(load_target(str(run.run_dir)), str(tmp_path / "val.jsonl"))  # the run's settings
    assert scored["metrics"]["eval_loss"] == pytest.approx(run.summary.metrics["val_loss"], abs=1e-5)
    if task == "sft":  # ...and it is not the base model: the adapter was put back, and had learned
        base = evaluate_file(
            load_target(str(model)), str(tmp_path / "val.jsonl"), settings=DataSettings(max_seq_len=64)
        )
        assert abs(base["metrics"]["eval_loss"] - scored["metrics"]["eval_loss"]) > 1e-4


@pytest.mark.parametrize(
    ("method", "weights"), [({"name": "lora", "r": 2, "alpha": 4}, "bfloat16"), ({"name": "full"}, "float32")]
)
def test_bf16_with_checkpointing_trains_float32_weights_over_the_resolved_base(
    method: dict, weights: str, tmp_path: Path, tiny_llama: Path
) -> None:
    from safetensors.torch import load_file

    train_cfg = {"max_steps": 2, "eval_every": 2, "precision": "bf16", "gradient_checkpointing": True}
    run = train(load_recipe(make_recipe(tmp_path, tiny_llama, "sft", method=method, train=train_cfg)))
    assert run.summary.status == "completed"
    # LoRA keeps its frozen base in bf16; full fine-tuning keeps float32 master weights.
    assert run.summary.precision == {"compute": "bf16", "weights": weights}
    final = run.run_dir / "final"
    saved = load_file(next(final.glob("*.safetensors")))
    assert {str(t.dtype) for t in saved.values()} == {"torch.float32"}, "trained weights stay float32"
