"""The full-weight methods, full and freeze: their recipe sections, builders and registration (`METHODS`,
which the registry loads by this module's name).

They train the base's own weights, so the base must be unquantised. The model-side helpers (torch) are
imported when a model is built, so reading a recipe stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from tunelab.errors import RecipeError
from tunelab.methods.registry import MethodConfig, MethodSpec


class FullMethod(MethodConfig):
    name: Literal["full"] = Field(description="Train every weight of the model.")


class FreezeMethod(MethodConfig):
    name: Literal["freeze"] = Field(description="Train only the top k blocks plus the head.")
    k: int = Field(ge=0, description="How many of the top transformer blocks to train (0: head only).")


def apply_full(
    model: Any, cfg: FullMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    from tunelab.models.methods import refuse_quantised

    refuse_quantised(model, cfg.name)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_freeze(
    model: Any, cfg: FreezeMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """Train the top k blocks and everything registered after them (final norm, pooler, head).

    "After the blocks" is read from parameter registration order, which for transformer models is
    embeddings -> blocks -> head; this avoids a per-architecture table of head names.
    """
    from tunelab.models.methods import find_blocks, refuse_quantised

    refuse_quantised(model, cfg.name)
    blocks = find_blocks(model, cfg.name)
    if cfg.k > len(blocks):
        raise RecipeError(f"method.k: the model has {len(blocks)} blocks, got k={cfg.k}")
    trainable = {id(p) for block in list(blocks)[len(blocks) - cfg.k :] for p in block.parameters()}
    last_block_param = {id(p) for p in blocks[-1].parameters()}
    past_blocks = False
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.parameters():
        if past_blocks or id(param) in trainable:
            param.requires_grad_(True)
        if id(param) in last_block_param:
            past_blocks = True
    return model


METHODS = (
    MethodSpec("full", FullMethod, apply_full, trains_base_weights=True, trains_new_tokens=True),
    MethodSpec("freeze", FreezeMethod, apply_freeze, trains_base_weights=True),
)
