"""Training's side of mixed precision: the trainable weights' float32 master copies under autocast, and the
Accelerator set to the run's precision. Which dtypes a run uses is decided in models/precision.py.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.models.precision import Precision


def upcast_trainable(model: Any, precision: Precision) -> int:
    """Under autocast, keep every trainable weight in float32 (the master copy AdamW updates).

    A base loaded in bf16 makes its new classification head (peft's modules_to_save copy) and prompt
    embeddings bf16 too; this turns them back. Returns how many tensors it changed. Without autocast it
    changes nothing: a float32 head under bf16 activations would then fail its matmul.
    """
    if precision.compute == "fp32":
        return 0
    changed = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            changed += 1
    return changed


def make_accelerator(mixed_precision: str = "no") -> Any:
    """An Accelerator for this device (CUDA when present, else CPU) and mixed-precision setting.

    accelerate keeps one state per process and refuses a second mixed-precision setting in it, or,
    when none is passed, silently keeps the first. A process that trains several recipes one after
    another (the tests, the bench, `plan`'s probe) therefore resets that state when the setting changes;
    the process group (accelerate's PartialState) is kept. cpu=True is also what lets torchrun /
    accelerate launch run DDP on CPU (gloo).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
