"""A run's final/ folder (or an export of it) read without loading its weights: where it is, what
tunelab.json says, the label map, which kind of weights it holds, and the tokenizer saved with it.

Restoring a run (restore.py) and merging another run's adapter into a base (base_adapter.py) both read
final/ through these, so neither needs the other to find out what a folder holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from tunelab.errors import TunelabError
from tunelab.tasks.registry import is_task, task_names

INFO = "tunelab.json"
LABELS = "labels.json"
PEFT_ADAPTER = "adapter_config.json"
BOTTLENECK_ADAPTER = "bottleneck_adapter.json"


def find_final(path: str | Path) -> Path | None:
    """The folder holding tunelab.json: `path` itself (final/ or an export) or `path`/final (a run)."""
    path = Path(path)
    for candidate in (path / "final", path):
        if (candidate / INFO).is_file():
            return candidate
    return None


def resolve_final(path: str | Path) -> Path:
    """Like `find_final`, but a folder that is not a finished run is an error that says why."""
    final = find_final(path)
    if final is not None:
        return final
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"{path}: no such run or model folder")
    summary = path / "summary.json"
    if summary.is_file():  # a run folder without final/: it has not finished (yet)
        status = json.loads(summary.read_text(encoding="utf-8")).get("status", "unknown")
        raise TunelabError(
            f"{path}: the run has no final/ model (status: {status})",
            fix="final/ is written when a run completes; resume it with `tunelab train --resume`",
        )
    raise TunelabError(
        f"{path}: not a tunelab run, final/ or export folder (no {INFO})",
        fix="pass a run folder (runs/<name>-<time>), its final/ folder, or a `tunelab export` folder",
    )


def read_info(final: Path) -> dict[str, Any]:
    info = json.loads((final / INFO).read_text(encoding="utf-8"))
    missing = [key for key in ("task", "method", "base_model") if key not in info]
    if missing:
        raise TunelabError(f"{final / INFO}: missing {', '.join(missing)}")
    if not is_task(info["task"]):
        raise TunelabError(f"{final / INFO}: unknown task {info['task']!r}; known: {', '.join(task_names())}")
    return dict(info)


def read_label_map(final: Path) -> dict[str, int] | None:
    path = final / LABELS
    return dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def adapter_kind(final: Path) -> str | None:
    """'peft', 'bottleneck', or None when the folder holds full weights."""
    if (final / PEFT_ADAPTER).is_file():
        return "peft"
    if (final / BOTTLENECK_ADAPTER).is_file():
        return "bottleneck"
    return None


def run_dir_of(final: Path) -> Path | None:
    return final.parent if final.name == "final" else None


def load_saved_tokenizer(final: Path) -> Any:
    """The tokenizer saved in final/: it carries the chat template used in training."""
    tokenizer = AutoTokenizer.from_pretrained(str(final))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
