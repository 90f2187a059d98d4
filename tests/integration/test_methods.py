"""Which weights move under full and freeze (adapter methods: test_method_matrix.py), with the real
loader and loop step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tunelab.config import ModelConfig, TrainConfig
from tunelab.data.tokenize import collate
from tunelab.errors import RecipeError
from tunelab.methods.full import FreezeMethod, FullMethod
from tunelab.models.load import load_model
from tunelab.models.methods import apply_method, count_parameters
from tunelab.training.loop import accumulate_gradients, optimizer_step
from tunelab.training.objectives import CLASSIFICATION_OBJECTIVE
from tunelab.training.schedule import build_optimizer, build_scheduler

LABELS = {"a": 0, "b": 1}


def train_a_few_steps(model_dir: Path, method) -> tuple[set[str], set[str], int, int]:
    """Return (names that changed, names marked trainable, trainable count, total count)."""
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name=str(model_dir)), "classify", LABELS)
    model = apply_method(loaded.model, method, "classify", loaded.new_modules)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-2)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=3)
    batch = collate(
        [{"input_ids": [5, 6, 7, 8], "label": 0}, {"input_ids": [9, 10, 11], "label": 1}], pad_token_id=1
    )
    accelerator = Accelerator(cpu=True)
    model.train()
    for _ in range(3):
        accumulate_gradients(model, CLASSIFICATION_OBJECTIVE, [batch], accelerator)
        optimizer_step(model, optimizer, scheduler, cfg, accelerator)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return changed, trainable, *count_parameters(model)


def test_full_moves_every_weight(tiny_bert: Path) -> None:
    changed, trainable, n_trainable, n_total = train_a_few_steps(tiny_bert, FullMethod(name="full"))
    assert n_trainable == n_total
    # Every weight that takes part in the forward pass moves (token-type 1 and unused positions need not).
    assert {n for n in trainable if "embeddings" not in n} <= changed


def test_freeze_moves_only_the_top_blocks_and_the_head(tiny_bert: Path) -> None:
    changed, trainable, n_trainable, n_total = train_a_few_steps(tiny_bert, FreezeMethod(name="freeze", k=1))
    assert changed == trainable
    assert all(n.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")) for n in changed)
    assert any(n.startswith("bert.encoder.layer.1.") for n in changed)
    assert any(n.startswith("classifier.") for n in changed)
    assert 0 < n_trainable < n_total


def test_freeze_with_more_blocks_than_the_model_has(tiny_bert: Path) -> None:
    loaded = load_model(ModelConfig(name=str(tiny_bert)), "classify", LABELS)
    with pytest.raises(RecipeError, match=r"method\.k: the model has 2 blocks, got k=5"):
        apply_method(loaded.model, FreezeMethod(name="freeze", k=5), "classify", loaded.new_modules)


def test_the_new_head_is_reported_as_new(tiny_bert: Path, tiny_llama: Path) -> None:
    assert load_model(ModelConfig(name=str(tiny_bert)), "classify", LABELS).new_modules == ["classifier"]
    assert load_model(ModelConfig(name=str(tiny_llama)), "sft").new_modules == []
