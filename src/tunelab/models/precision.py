"""Which dtypes a run trains in: the weights' (storage, and the optimizer's master copy) and the matmuls'.

Mixed precision, not pure bf16: every weight that trains stays float32 and the forward and backward run
under autocast, so small AdamW updates are not rounded away (a bf16 weight cannot move by less than
1/256 of itself). Weights that do not train (the frozen base under LoRA and kin) are stored in the
compute dtype: they are only ever read by bf16 matmuls, and half the memory is what adapter methods are
for. `train.precision: auto` picks bf16 only where the hardware runs it fast: on a CPU without
AVX512-BF16 or AMX, bf16 matmuls are emulated and several times slower than float32.

Loading and restoring a model read these dtypes here; training's own part (float32 master copies of
what trains, the Accelerator) is training/precision.py.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.config import Recipe

# Methods whose base weights train: these keep float32 weights (master copies) under autocast.
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    compute: str  # "fp32" (no autocast), "bf16" or "fp16" (autocast)
    weights: torch.dtype  # dtype the model is loaded in

    @property
    def mixed_precision(self) -> str:
        """The name accelerate's `Accelerator(mixed_precision=...)` takes."""
        return "no" if self.compute == "fp32" else self.compute

    @property
    def compute_dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.compute]

    @property
    def activation_dtype(self) -> torch.dtype:
        """What the saved activations mostly are: the matmuls' output dtype."""
        return self.weights if self.compute == "fp32" else self.compute_dtype

    @property
    def weights_name(self) -> str:
        return str(self.weights).removeprefix("torch.")

    def as_dict(self) -> dict[str, str]:
        """As summary.json and final/tunelab.json record it."""
        return {"compute": self.compute, "weights": self.weights_name}

    @classmethod
    def from_dict(cls, recorded: dict[str, str]) -> Precision:
        return cls(compute=recorded["compute"], weights=WEIGHT_DTYPES[recorded["weights"]])

    def autocast(self, device_type: str) -> AbstractContextManager[Any]:
        """The autocast training ran its forward passes under (nothing for fp32)."""
        if self.compute == "fp32":
            return nullcontext()
        return torch.autocast(device_type, dtype=self.compute_dtype)


def fast_bf16(device_type: str) -> bool:
    """Does this device multiply bf16 matrices natively (faster than float32)?

    CUDA: compute capability 8.0 or later (Ampere, Hopper, ...); earlier GPUs emulate bf16. CPU: the
    AVX512-BF16 or AMX-BF16 instructions (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4+).
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)
    if device_type == "cpu":
        capabilities = cpu_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


# Overrides the CPU probe: "1" declares native bf16, "0" hides it. For a CPU the probe misjudges (a VM
# that masks its flags), and for the tests, which run their invariants both ways in one session
# (subprocesses inherit it, which a patched function would not reach).
CPU_BF16_ENV = "TUNELAB_CPU_BF16"


def cpu_capabilities() -> dict[str, Any]:
    get = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8; older: no detection, so float32
    capabilities = dict(get()) if get is not None else {}
    override = os.environ.get(CPU_BF16_ENV, "").strip()
    if override in ("0", "1"):
        capabilities.update(avx512_bf16=override == "1", amx_bf16=False)
    return capabilities


def resolve_precision(recipe: Recipe, device_type: str) -> Precision:
    """`train.precision` and `model.dtype` resolved for this device (see the module docstring)."""
    compute = recipe.train.precision
    if compute == "auto":
        compute = "bf16" if fast_bf16(device_type) else "fp32"
    return Precision(
        compute=compute, weights=resolve_weights(recipe.model.dtype, recipe.method.name, compute)
    )


def resolve_weights(model_dtype: str, method: str | None = None, compute: str = "fp32") -> torch.dtype:
    """The one meaning of `model.dtype`: a named dtype is used as named; `auto` is float32 where the
    base trains (its master copy: `method` trains base weights), else the compute dtype (a frozen
    base, or nothing training at all when `method` is None)."""
    if model_dtype != "auto":
        return WEIGHT_DTYPES[model_dtype]
    return weights_dtype(method, compute) if method is not None else COMPUTE_DTYPES[compute]


def weights_dtype(method: str, compute: str) -> torch.dtype:
    """`model.dtype: auto` under `method`: float32 where the base trains, else the compute dtype."""
    from tunelab.methods.registry import method_spec

    return torch.float32 if method_spec(method).trains_base_weights else COMPUTE_DTYPES[compute]


def precision_for(recipe: Recipe) -> Precision:
    """`resolve_precision` for the device `train` uses here: CUDA when present, else the CPU."""
    return resolve_precision(recipe, "cuda" if torch.cuda.is_available() else "cpu")


def describe_precision(precision: Precision) -> str:
    if precision.compute == "fp32":
        return f"no autocast, {precision.weights_name} weights"
    return f"{precision.compute} autocast, {precision.weights_name} weights (trainable ones float32)"
