"""Opt-in speed and memory switches: `train.gradient_checkpointing` and `train.compile`."""

from __future__ import annotations

from typing import Any

from tunelab.errors import RecipeError
from tunelab.models.methods import find_blocks


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each block in backward (transformers' own switch), before any adapter is attached.

    Non-reentrant checkpointing: it needs no input that requires grad (so a frozen embedding under
    LoRA is fine, with no `enable_input_require_grads` hook) and it restores the RNG state, so dropout
    masks, and therefore losses and gradients, equal the run without checkpointing.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise RecipeError(
            f"train.gradient_checkpointing: {type(model).__name__} does not support it in transformers; "
            "set it to false, or lower train.batch_size / train.max_seq_len instead"
        )
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.config.use_cache = False  # a KV cache is useless in training and transformers warns about it


def compile_blocks(model: Any) -> int:
    """torch.compile each transformer block in place ("regional" compilation); returns how many.

    Why blocks and not the whole model: the blocks are where the time goes and they are all alike, so
    one compilation serves every layer (minutes less than compiling the model whole); the head and loss
    stay eager, so the fused chunked loss (losses.py), which hooks the head, still applies; and
    `Module.compile` keeps parameter names unchanged, so checkpoints, adapters and export are unaffected.
    """
    blocks = find_blocks(model, method="train.compile")
    for block in blocks:
        block.compile()
    return len(blocks)
