"""Greedy decoding for decoder-only models: tunelab's own loop over transformers' KV cache.

Why not `model.generate`: this loop is the base the fast engine (issue 30) builds on (a static cache and a
compiled step, rows joining and leaving a running batch), which generate cannot be opened up for. On its
own it is not measurably faster than generate on SmolLM2-135M on a 2-core CPU (bench/README.md, "Fast
generation": equal at batch 1, -1% to +16% at batch 8 across runs), though it does less per step: one
forward and an argmax, the stop tokens checked with one tensor op, no logits processors or
stopping-criteria objects.

It runs the model exactly as generate does (the prompt prefilled with `logits_to_keep=1`, then one token
per step over a DynamicCache, positions from the attention mask), so greedy tokens equal generate's; the
tests assert it. Sampling, streaming and encoder-decoders still go through generate
(generation.generate_batch decides).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache


@torch.no_grad()
def greedy_decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stops: Sequence[int],
    pad_id: int,
) -> list[list[int]]:
    """Each row's new tokens, greedy, up to and including its first stop token (or `max_new_tokens`).

    `input_ids` are left-padded (padding where `attention_mask` is 0), on the model's device; `pad_id` is
    fed to rows that have stopped while others go on.
    """
    cache = DynamicCache(config=model.config)
    positions = _positions(attention_mask)
    prefill = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        cache=cache,
        use_cache=True,
        **prefill,
    )
    stop_ids = torch.tensor(list(stops), dtype=torch.long, device=input_ids.device)  # may be empty
    produced: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    running = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    mask = attention_mask
    for step in range(max_new_tokens):
        # A finished row is fed padding, as generate feeds it, rather than leaving the batch: a smaller
        # batch may run other matmul kernels, which round differently in bf16, and the loop promises
        # generate's tokens. Continuous batching, which must drop rows, will measure that first.
        tokens = torch.where(running, out.logits[:, -1].argmax(-1), pad_id)
        for row in running.nonzero().squeeze(1).tolist():
            produced[row].append(int(tokens[row]))
        running &= ~torch.isin(tokens, stop_ids)
        if step == max_new_tokens - 1 or not bool(running.any()):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
        )
    return produced


def runs_in_loop(model: Any) -> bool:
    """Whether greedy_decode can run this model: a decoder-only one whose forward takes a cache as is.
    Prefix and prompt tuning add their virtual tokens in generate's preparation step, so they stay there."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    peft_config = getattr(model, "active_peft_config", None)
    return not getattr(peft_config, "is_prompt_learning", False)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position, counting from a row's first real token (left padding sits at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _keeps_logits(model: Any) -> bool:
    """Whether the model computes logits for the last position only when asked (`logits_to_keep`), as
    generate checks: the prompt's full logits are a (prompt x vocabulary) matmul nobody reads."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
