"""Greedy, batched generation from chat prompts: the answers that BLEU, ROUGE and exact match score.

Decoder-only models continue the last position of each row, so prompts are padded on the LEFT:
with right padding a short prompt would be continued after its pad tokens. Prompts are batched in
order of length (less padding, fewer wasted positions) and the answers put back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    stop_token_ids: Sequence[int] = (),
) -> list[str]:
    """One greedy answer per chat prompt (a list of {role, content} messages), stripped, in input order.

    Generation stops at the tokenizer's EOS, at every EOS of the model's generation config (Llama 3
    lists several) and at `stop_token_ids` (say the template's end-of-turn token, when the tokenizer's
    EOS is something else). Only the new tokens are decoded, without special tokens.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be >= 1")
    encoded = [_encode_prompt(tokenizer, messages) for messages in prompts]
    eos_ids = _eos_token_ids(model, tokenizer, stop_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(model.parameters()).device
    answers = [""] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    was_training = model.training
    model.eval()  # no dropout: greedy answers must not depend on the mode the caller left it in
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = _left_pad([encoded[i] for i in rows], pad_id)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                **_greedy_kwargs(max_new_tokens, eos_ids, pad_id),
            )
            for i, new_tokens in zip(rows, output[:, input_ids.shape[1] :].tolist(), strict=True):
                answers[i] = _decode_answer(tokenizer, new_tokens, eos_ids)
    finally:
        model.train(was_training)
    return answers


def _encode_prompt(tokenizer: Any, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template already wrote any BOS it wants; letting the tokenizer add one would double it.
    ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the chat template rendered {messages!r} as no tokens")
    return ids


def _eos_token_ids(model: Any, tokenizer: Any, extra: Sequence[int]) -> list[int]:
    """Tokenizer EOS first (it is the pad fallback), then the model's own EOS ids, then `extra`."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    candidates = [tokenizer.eos_token_id, *(configured or []), *extra]
    eos_ids = list(dict.fromkeys(int(t) for t in candidates if t is not None))
    if not eos_ids:
        raise ValueError(
            "neither the tokenizer nor the model defines an EOS token, so generation cannot stop"
        )
    return eos_ids


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, width - len(row) :] = 1
    return input_ids, attention_mask


def _greedy_kwargs(max_new_tokens: int, eos_ids: list[int], pad_id: int) -> dict[str, Any]:
    # Passed as keyword arguments, not as a fresh GenerationConfig: transformers then marks only
    # these as set by us, so sampling values inherited from the model's generation_config.json
    # (temperature, top_p) are ignored quietly instead of warning that do_sample is off.
    return {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": max_new_tokens,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
    }


def _decode_answer(tokenizer: Any, new_tokens: list[int], eos_ids: list[int]) -> str:
    # Cut at the first stop token ourselves: a stop token that is not a special token (or a pad
    # that is an ordinary token) would otherwise survive skip_special_tokens.
    stops = set(eos_ids)
    end = next((k for k, token in enumerate(new_tokens) if token in stops), len(new_tokens))
    return str(tokenizer.decode(new_tokens[:end], skip_special_tokens=True)).strip()
