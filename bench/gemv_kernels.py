"""One matrix-vector product (batch 1 decode's unit of work) in each kernel torch offers on this CPU:
fp32 and bf16 `linear` (and bf16 with the fp32 weight cast at each call, as autocast does), and the weight-only int8 `_weight_int8pack_mm` (int8 weights, a scale per row)
with bf16 or fp32 activations, at SmolLM2-135M's shapes (K inputs, N outputs). Microseconds per call,
weights hot in cache (a real decode streams them from memory, so the real gap is larger).

    .venv/bin/python bench/gemv_kernels.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

SHAPES = [(576, 1536), (1536, 576), (576, 576), (576, 49152)]  # gate/up, down, q/o, the tied lm_head


def microseconds(fn: Callable[[], torch.Tensor], calls: int) -> float:
    for _ in range(50):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def measure(inputs: int, outputs: int) -> dict[str, float]:
    weight, x = torch.randn(outputs, inputs), torch.randn(1, inputs)
    scales = weight.abs().amax(1) / 127
    int8 = (weight / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
    x16, weight16, scales16 = x.bfloat16(), weight.bfloat16(), scales.bfloat16()
    calls = 500 if outputs > 10_000 else 2000
    kernels = {
        "fp32": lambda: F.linear(x, weight),
        "bf16": lambda: F.linear(x16, weight16),
        "bf16, fp32 weight cast per call (as autocast)": lambda: F.linear(x16, weight.bfloat16()),
        "int8 weights, bf16 x": lambda: torch._weight_int8pack_mm(x16, int8, scales16),
        "int8 weights, fp32 x": lambda: torch._weight_int8pack_mm(x, int8, scales),
    }
    return {name: round(microseconds(fn, calls), 1) for name, fn in kernels.items()}


def main() -> None:
    torch.manual_seed(0)
    for inputs, outputs in SHAPES:
        print({"K": inputs, "N": outputs, **measure(inputs, outputs)}, flush=True)


if __name__ == "__main__":
    main()
