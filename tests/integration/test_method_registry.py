"""A method registered from this file alone: it validates, trains, gets its precision and is planned,
with no other file edited. What `tunelab.methods.register_method` promises a plugin."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file

from tests.conftest import make_recipe
from tunelab.config import load_recipe
from tunelab.errors import RecipeError
from tunelab.methods import MethodConfig, MethodSpec, register_method, unregister_method


class NormsMethod(MethodConfig):
    name: Literal["norms"] = Field(description="Train only the normalisation layers' weights.")
    final_only: bool = Field(False, description="Only the final norm, not every block's.")


def train_norms(
    model: Any, cfg: NormsMethod, task: str, new_modules: list[str], new_tokens: Sequence[int]
) -> Any:
    for name, param in model.named_parameters():
        wanted = name.endswith("model.norm.weight") if cfg.final_only else "norm" in name
        param.requires_grad_(wanted or any(name.startswith(m) for m in new_modules))
    return model


@pytest.fixture
def norms() -> Iterator[None]:
    register_method(MethodSpec("norms", NormsMethod, train_norms, trains_base_weights=True))
    yield
    unregister_method("norms")


def _norm_names(weights: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in weights if "norm" in name}


def test_a_registered_method_validates_trains_and_is_planned(
    norms: None, tmp_path: Path, tiny_llama: Path
) -> None:
    from tunelab.models.precision import weights_dtype
    from tunelab.plan import plan
    from tunelab.runner import train

    path = make_recipe(
        tmp_path, tiny_llama, "sft", method={"name": "norms"}, train={"max_steps": 2, "lr": 5e-2}
    )
    recipe = load_recipe(path)
    assert isinstance(recipe.method, NormsMethod)
    with pytest.raises(RecipeError, match=r"method\.rank: unknown key; allowed: name, final_only"):
        load_recipe(path, ["method.rank=4"])

    # Precision: it trains base weights, so those are float32 masters under bf16 autocast.
    assert weights_dtype("norms", "bf16") == torch.float32

    # Plan: the meta-device count is the method's own (norm weights only).
    planned = plan(recipe, None, probe_steps=0)
    norm_params = 5 * 32  # 2 blocks x (input, post-attention) + the final norm, hidden 32
    assert planned.estimate.params.trainable == norm_params

    # Training: only the norm weights move.
    result = train(recipe)
    assert result.summary.trainable_params == norm_params
    before = load_file(str(tiny_llama / "model.safetensors"))
    after = load_file(str(result.run_dir / "final" / "model.safetensors"))
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved == _norm_names(before)


def test_an_unregistered_method_is_named_with_the_registered_ones(tmp_path: Path, tiny_llama: Path) -> None:
    path = make_recipe(tmp_path, tiny_llama, "sft", method={"name": "norms"})
    with pytest.raises(RecipeError) as refused:
        load_recipe(path)
    assert "method: unknown method 'norms'; must be one of full, freeze, lora" in str(refused.value)
