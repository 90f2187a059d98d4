"""Issue 30's first measurement: where a greedy decode's time goes on this CPU, before any engine.

    .venv/bin/python bench/decode_speed.py --model ~/.cache/tunelab/gguf/SmolLM2-135M-Instruct.Q4_1-*/

Decodes `--new` tokens after a prompt of about `--prompt` tokens, greedy, at each batch size, with:

- `generate`: plain `model.generate` (what `generation.generate_batch` runs today);
- `loop`: tunelab's own greedy loop (`tunelab.decoding.greedy_decode`: a DynamicCache, the prefill with
  logits_to_keep=1, then one forward and an argmax per step);
- `static`: the same loop over a StaticCache with the one-token decode step compiled (torch.compile,
  mode "default": "reduce-overhead" adds CUDA graphs only).

in `fp32`, `bf16` (weights cast once), `autocast` (fp32 weights under bf16 autocast) and `bf16-autocast`
(bf16 weights under autocast: how tunelab evaluates a bf16 run today), and `int8` (an experiment: every
Linear's weight in int8 with a scale per row, bf16 activations, torch's `_weight_int8pack_mm`). Reports tokens/s (new tokens of all rows / wall seconds, prefill included) and whether each
variant's tokens equal `generate`'s. Every variant runs once untimed first (compile, caches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StaticCache

from tunelab.decoding import greedy_decode

Decode = Callable[[Any, torch.Tensor, torch.Tensor, int], torch.Tensor]
TEXT = (
    "The history of the city begins with a small settlement on the river, where traders met to exchange "
    "salt, grain and cloth. Over the centuries the settlement grew into a market town, then a walled city "
    "with a cathedral, a university and a port that sent ships across the sea. "
)


def prompts(tokenizer: Any, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` prompts of `length` tokens (rows differ in their first token so rows do not coincide)."""
    ids = tokenizer(TEXT * 20, add_special_tokens=False)["input_ids"][:length]
    rows = torch.tensor([[ids[0] + r, *ids[1:]] for r in range(batch)])
    return rows, torch.ones_like(rows)


def with_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    return out[:, ids.shape[1] :]


def with_loop(model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
    """tunelab's own greedy loop, as generate_batch runs it (no stop tokens: every row decodes `new`)."""
    return torch.tensor(greedy_decode(model, ids, mask, max_new_tokens=new, stops=[], pad_id=0))


class Static:
    """The loop over a StaticCache, its decode step compiled once per (batch, cache length)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.step = torch.compile(self._decode, mode="default", dynamic=False)

    def _decode(self, token: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        out = self.model(
            input_ids=token, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        )
        return out.logits[:, -1].argmax(-1)

    def __call__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int) -> torch.Tensor:
        width = ids.shape[1] + new
        cache = StaticCache(config=model.config, max_cache_len=width)
        full = torch.cat([mask, mask.new_zeros(mask.shape[0], new)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids,
            attention_mask=full[:, : ids.shape[1]],
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        tokens = [out.logits[:, -1].argmax(-1)]
        for k in range(new - 1):
            at = ids.shape[1] + k
            full[:, at] = 1
            positions = positions[:, -1:] + 1
            tokens.append(self.step(tokens[-1][:, None].clone(), full.clone(), positions.clone(), cache))
        return torch.stack(tokens, dim=1)


class Int8Linear(torch.nn.Module):
    """A Linear's weight as int8 with one scale per output row (symmetric), multiplied by bf16 activations
    with torch's weight-only kernel: an experiment (`--precisions int8`), not tunelab's engine."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
        self.register_buffer(
            "weight_int8", (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scales).reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def quantize_int8(model: Any) -> Any:
    """Every Linear (the tied lm_head included, as its own int8 copy) replaced by an Int8Linear."""
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, Int8Linear(child))
    return model


def timed(
    variant: Decode, model: Any, ids: torch.Tensor, mask: torch.Tensor, new: int
) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    with torch.inference_mode():
        out = variant(model, ids, mask, new)
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--variants", default="generate,loop,static")
    parser.add_argument("--precisions", default="fp32,bf16,autocast")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    results = []
    for precision in args.precisions.split(","):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
        if precision == "int8":
            dtype = torch.bfloat16  # norms, embeddings and attention in bf16 around the int8 matmuls
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
        if precision == "int8":
            quantize_int8(model)
        static = Static(model)
        variants: dict[str, Decode] = {"generate": with_generate, "loop": with_loop, "static": static}
        for batch in map(int, args.batches.split(",")):
            ids, mask = prompts(tokenizer, batch, args.prompt)
            reference = None
            for name in args.variants.split(","):
                autocast = (
                    torch.autocast("cpu", dtype=torch.bfloat16)
                    if precision.endswith("autocast")
                    else contextlib.nullcontext()
                )
                with autocast:
                    timed(variants[name], model, ids, mask, args.new)  # warm-up (and compile)
                    tokens, seconds = timed(variants[name], model, ids, mask, args.new)
                reference = tokens if reference is None else reference
                row = {
                    "precision": precision,
                    "batch": batch,
                    "variant": name,
                    "tokens_per_s": round(batch * args.new / seconds, 1),
                    "same_tokens_as_first": bool(torch.equal(tokens, reference)),
                }
                print(json.dumps(row), flush=True)
                results.append(row)


if __name__ == "__main__":
    main()
