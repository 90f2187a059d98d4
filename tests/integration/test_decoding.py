"""tunelab's greedy loop (decoding.py) gives model.generate's tokens: batched and left-padded, with stop
tokens that end some rows early (which are then fed padding, as generate feeds them), in float32 and under bf16 autocast, and
through a LoRA adapter. A random tiny model's logits have no near-ties to hide a difference behind."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tunelab.decoding import greedy_decode, runs_in_loop
from tunelab.generation import left_pad

PROMPTS = [[5, 17, 42, 9, 77, 120, 3], [88, 12], [230, 231, 232, 15, 16], [64]]
NEW = 12


def _generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, stops: list[int]) -> list[list[int]]:
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=NEW,
        do_sample=False,
        eos_token_id=stops,
        pad_token_id=0,
    )
    return [_through_first_stop(row, stops) for row in out[:, ids.shape[1] :].tolist()]


def _through_first_stop(tokens: list[int], stops: list[int]) -> list[int]:
    end = next((k + 1 for k, token in enumerate(tokens) if token in stops), len(tokens))
    return tokens[:end]


def _model(tiny_llama: Path) -> Any:
    """The tiny Llama with large random weights: at the initial scale (std 0.02) attention is nearly
    uniform and the answer barely depends on positions or the cache, so a wrong one would go unseen."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                torch.nn.init.normal_(weight, std=0.3)
    return model


def _stops_that_fire(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """Stop tokens the model will emit: the third token of row 0 and the first of row 2, so rows end at
    different steps (and one in the first step) while others run to the limit."""
    free = _generate(model, ids, mask, stops=[10_000])
    return [free[0][2], free[2][0]]


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_greedy_loop_equals_generate_with_rows_stopping_early(tiny_llama: Path, precision: str) -> None:
    model = _model(tiny_llama)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    scope = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else contextlib.nullcontext()
    with torch.no_grad(), scope:
        stops = _stops_that_fire(model, ids, mask)
        expected = _generate(model, ids, mask, stops)
        got = greedy_decode(model, ids, mask, max_new_tokens=NEW, stops=stops, pad_id=0)
    assert got == expected
    lengths = sorted(len(row) for row in got)
    assert lengths[0] < lengths[-1] == NEW  # some rows stopped early, some ran to the limit


def test_greedy_loop_equals_generate_through_a_lora_adapter(tiny_llama: Path) -> None:
    model = get_peft_model(_model(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, weight in model.named_parameters():
        if "lora_B" in name:  # a zero B is the base model: make the adapter change the answers
            torch.nn.init.normal_(weight, std=0.5)
    model.eval()
    ids, mask = left_pad(PROMPTS, pad_id=0)
    with torch.no_grad():
        expected = _generate(model, ids, mask, stops=[1])
        got = greedy_decode(model, ids, mask, max_new_tokens=NEW, stops=[1], pad_id=0)
        with model.disable_adapter():
            base = greedy_decode(model, ids, mask, max_new_tokens=NEW, stops=[1], pad_id=0)
    assert got == expected and got != base
    assert runs_in_loop(model)


def test_prefix_tuning_stays_with_generate(tiny_llama: Path) -> None:
    from peft import PrefixTuningConfig

    model = get_peft_model(
        _model(tiny_llama), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    assert not runs_in_loop(model)
