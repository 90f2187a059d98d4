"""Methods decide which weights move. A small registry maps the recipe's `method.name` to a builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model

from tunelab.config import FreezeMethod, FullMethod, LoraMethod
from tunelab.errors import RecipeError

Builder = Callable[[Any, Any, str, list[str]], Any]


def apply_full(model: Any, cfg: FullMethod, task: str, new_modules: list[str]) -> Any:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_freeze(model: Any, cfg: FreezeMethod, task: str, new_modules: list[str]) -> Any:
    """Train the top k blocks and everything registered after them (final norm, pooler, head).

    "After the blocks" is read from parameter registration order, which for transformer models is
    embeddings -> blocks -> head; this avoids a per-architecture table of head names.
    """
    blocks = find_blocks(model)
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


def find_blocks(model: Any) -> torch.nn.ModuleList:
    """The transformer's stack of blocks: the longest ModuleList whose members share one class."""
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if not candidates:
        raise RecipeError("method: freeze needs a model with a stack of transformer blocks; none was found")
    return max(candidates, key=len)


def apply_lora(model: Any, cfg: LoraMethod, task: str, new_modules: list[str]) -> Any:
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # peft's "all-linear" skips the output head, which LoRA should not adapt.
        target_modules="all-linear" if cfg.target_modules == "auto" else cfg.target_modules,
        task_type=TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM,
        # Newly initialised modules (the classification head) have no pre-trained weights to adapt:
        # they are trained in full and saved with the adapter.
        modules_to_save=new_modules or None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeError(f"method.target_modules: {exc}") from None


METHODS: dict[str, Builder] = {"full": apply_full, "freeze": apply_freeze, "lora": apply_lora}


def apply_method(model: Any, cfg: Any, task: str, new_modules: list[str]) -> Any:
    return METHODS[cfg.name](model, cfg, task, new_modules)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total), counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
