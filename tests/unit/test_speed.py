"""Speed switches change speed or memory, never the numbers: checkpointing, compile, fused AdamW,
mixed precision (with float32 master weights), and the host-sync-free loop's logged values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from tests.conftest import CHATS, write_jsonl
from tunelab.config import Recipe, TrainConfig
from tunelab.data.formats import load_split
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy, collate, tokenize_chats
from tunelab.errors import RecipeError
from tunelab.models import precision as precision_module
from tunelab.models.precision import Precision, resolve_precision
from tunelab.training.loop import accumulate_gradients, optimizer_step
from tunelab.training.objectives import CAUSAL_LM_OBJECTIVE
from tunelab.training.precision import make_accelerator, upcast_trainable
from tunelab.training.schedule import build_optimizer, build_scheduler, fused_adamw_supported
from tunelab.training.speed import compile_blocks, enable_gradient_checkpointing


@pytest.fixture
def batch(tmp_path: Path, tokenizer: Any) -> dict[str, torch.Tensor]:
    ensure_chat_template(tokenizer)
    chats = load_split(write_jsonl(tmp_path / "c.jsonl", CHATS)).records
    examples, _ = tokenize_chats(tokenizer, chats, LengthPolicy(max_seq_len=64))
    return collate(examples, 1)


def step_loss_and_grads(
    model: Any, batch: dict[str, torch.Tensor], accelerator: Accelerator | None = None
) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    result = accumulate_gradients(model, CAUSAL_LM_OBJECTIVE, [batch], accelerator or Accelerator(cpu=True))
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return result.loss, grads


def fresh(tiny_llama: Path, **config: Any) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, **config)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama: Path, batch: dict) -> None:
    # Dropout on, so the test also shows that checkpointing replays the same dropout masks.
    plain_loss, plain = step_loss_and_grads(fresh(tiny_llama, attention_dropout=0.1), batch)
    model = fresh(tiny_llama, attention_dropout=0.1)
    enable_gradient_checkpointing(model)
    assert model.is_gradient_checkpointing
    torch.manual_seed(0)
    ckpt_loss, ckpt = step_loss_and_grads(model, batch)
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain.keys() == ckpt.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, atol=1e-6, rtol=0, msg=name)


def test_gradient_checkpointing_is_refused_for_a_model_without_it() -> None:
    with pytest.raises(RecipeError, match="does not support it"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_llama: Path, batch: dict) -> None:
    plain_loss, plain = step_loss_and_grads(fresh(tiny_llama), batch)
    model = fresh(tiny_llama)
    assert compile_blocks(model) == model.config.num_hidden_layers
    names_before = [name for name, _ in model.named_parameters()]
    compiled_loss, compiled = step_loss_and_grads(model, batch)
    assert [name for name, _ in model.named_parameters()] == names_before  # checkpoints keep their keys
    assert compiled_loss == pytest.approx(plain_loss, abs=1e-5)
    for name, grad in plain.items():
        torch.testing.assert_close(compiled[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_fused_adamw_is_chosen_only_where_its_kernel_exists() -> None:
    assert fused_adamw_supported([torch.zeros(2, requires_grad=True)])
    assert not fused_adamw_supported([])
    assert not fused_adamw_supported([torch.zeros(2, device="meta")])
    assert not fused_adamw_supported([torch.zeros(2, dtype=torch.int8)])
    optimizer = build_optimizer(torch.nn.Linear(2, 2), TrainConfig())
    assert optimizer.defaults["fused"] is True
    sharded = build_optimizer(torch.nn.Linear(2, 2), TrainConfig(distributed="fsdp"))
    assert not sharded.defaults["fused"]


def test_fused_adamw_takes_the_same_step_as_the_reference(tiny_llama: Path, batch: dict) -> None:
    weights = []
    for fused in (True, False):
        model = fresh(tiny_llama)
        cfg = TrainConfig(lr=1e-2)
        optimizer = build_optimizer(model, cfg)
        optimizer.param_groups[0]["fused"] = optimizer.param_groups[1]["fused"] = fused
        optimizer.defaults["fused"] = fused
        scheduler = build_scheduler(optimizer, cfg, total_steps=2)
        for _ in range(2):
            step_loss_and_grads(model, batch)
            optimizer_step(model, optimizer, scheduler, cfg, Accelerator(cpu=True))
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], atol=1e-6, rtol=1e-5, msg=name)


def recipe(method: str = "lora", **train: Any) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "speed",
            "task": "sft",
            "model": {"name": "m"},
            "data": {"train": __file__},
            "method": {"name": method},
            "train": train,
        }
    )


def test_auto_precision_is_bf16_only_where_bf16_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert resolve_precision(recipe(), "cpu") == Precision("fp32", torch.float32)
    monkeypatch.setattr(precision_module, "cpu_capabilities", lambda: {"amx_bf16": True})
    # An adapter method keeps its frozen base in bf16; full fine-tuning keeps float32 master weights.
    assert resolve_precision(recipe("lora"), "cpu") == Precision("bf16", torch.bfloat16)
    assert resolve_precision(recipe("full"), "cpu") == Precision("bf16", torch.float32)
    assert resolve_precision(recipe("full", precision="fp32"), "cpu") == Precision("fp32", torch.float32)


@pytest.fixture
def bf16_accelerator() -> Any:
    """accelerate's process-wide state in bf16 for one test, then back: later tests' plain
    `Accelerator(cpu=True)` would otherwise inherit bf16 autocast."""
    yield make_accelerator("bf16")
    make_accelerator("no")


def test_bf16_training_keeps_float32_master_weights_and_close_losses(
    tiny_llama: Path, batch: dict, bf16_accelerator: Any
) -> None:
    fp32_loss, _ = step_loss_and_grads(fresh(tiny_llama), batch, make_accelerator("no"))
    model = fresh(tiny_llama)
    accelerator = make_accelerator("bf16")
    assert accelerator.mixed_precision == "bf16"
    model = accelerator.prepare(model)
    assert upcast_trainable(model, Precision("bf16", torch.float32)) == 0  # already float32
    bf16_loss, grads = step_loss_and_grads(model, batch, accelerator)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 for g in grads.values())
    assert bf16_loss != fp32_loss  # autocast did run the matmuls in bf16 ...
    assert bf16_loss == pytest.approx(fp32_loss, rel=1e-2)  # ... to bf16's precision


def test_a_bf16_head_is_upcast_under_autocast_and_left_alone_without() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)).to(torch.bfloat16)
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    assert upcast_trainable(model, Precision("fp32", torch.bfloat16)) == 0
    assert upcast_trainable(model, Precision("bf16", torch.bfloat16)) == 2
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.float32


def test_fp16_is_refused_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: fp16 is allowed")
    from tunelab.config import host_problems

    problems = host_problems(recipe(precision="fp16"))
    assert [str(p) for p in problems] == [
        "train.precision: fp16 needs a CUDA GPU (loss scaling); on CPU use fp32 or bf16"
    ]
