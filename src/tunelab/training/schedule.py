"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import get_scheduler

from tunelab.config import TrainConfig

# Our names -> transformers' schedule names (all with linear warmup).
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def build_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D tensors) get no weight decay, as is standard."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # Sharded strategies change the weights after this (FSDP2 swaps in DTensor shards; DeepSpeed wraps
    # the optimizer): the fused kernel is untested there (no GPU here), so they keep the foreach path.
    fused = cfg.distributed == "ddp" and fused_adamw_supported(params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, fused=fused)


# Devices with a fused AdamW kernel: one pass over each tensor instead of the foreach path's dozen
# (on 2 CPU cores, 17 ms instead of 127 ms a step for MiniLM's 22.7M weights; bench/README.md).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """True when every weight is a plain floating-point tensor on one device with the fused kernel
    (not meta, not a DTensor, not spread over devices)."""
    devices = {p.device.type for p in params}
    return (
        bool(params)
        and len(devices) == 1
        and devices <= set(FUSED_ADAMW_DEVICES)
        and all(p.is_floating_point() and type(p.data) is torch.Tensor for p in params)
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    warmup = math.floor(cfg.warmup_ratio * total_steps)
    return get_scheduler(
        SCHEDULES[cfg.scheduler], optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
    )


def total_steps(cfg: TrainConfig, micro_batches_per_epoch: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    # An epoch's last step may hold fewer micro-batches: steps do not straddle epochs (loop.next_step).
    steps_per_epoch = math.ceil(micro_batches_per_epoch / cfg.grad_accum)
    return max(1, math.ceil(cfg.epochs * steps_per_epoch))
