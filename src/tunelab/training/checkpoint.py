"""Atomic checkpoints on top of accelerate's save_state/load_state.

accelerate writes model, optimizer, scheduler, RNG states and our registered objects (and knows the
FSDP/DeepSpeed layouts). We add two things it lacks: atomicity (write to a hidden temporary folder,
then rename, so a crash never leaves a checkpoint that looks complete) and keep-last pruning.
Only trainable weights are written: frozen weights come back from the base model on resume, and a
LoRA checkpoint stays megabytes instead of the whole model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def keep_only_trainable_weights(models: list[Any], weights: list[dict[str, Any]], _output_dir: str) -> None:
    """accelerate save-state pre-hook: drop frozen tensors from the state dicts about to be written."""
    for model, state in zip(models, weights, strict=True):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


def save_checkpoint(accelerator: Any, root: Path, step: int, keep_last: int) -> Path:
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # atomic on POSIX: the checkpoint appears complete or not at all
        prune(root, keep_last)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Temporary folders of interrupted saves are not listed."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    for leftover in root.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(accelerator: Any, path: Path) -> None:
    # strict=False: the checkpoint holds only the trainable weights (see keep_only_trainable_weights).
    accelerator.load_state(str(path), strict=False)
