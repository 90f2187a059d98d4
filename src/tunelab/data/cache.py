"""Cache of the prepared data stage, so a second `train` on the same data skips loading, cleaning and
tokenising.

The key covers everything the result depends on: the bytes of every data file, the tokenizer (its
vocabulary, special tokens and chat template), every data setting, the length and packing settings,
the task and the tunelab version. Entries are JSON (never pickle: a cache folder is no place to run
code from) and are written atomically; a damaged entry is ignored and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.config import DataConfig, Recipe
from tunelab.config.sections import BUILTIN_TEMPLATE_NAMES
from tunelab.data.pipeline import PreparedData
from tunelab.hashing import file_sha256

# Bumped when what an entry holds changes shape: 2 tags each example's dataset as "dataset" (was "task").
CACHE_FORMAT = 2
SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "report.json")


def cache_dir(output_dir: str | Path) -> Path:
    """Where prepared data is kept, beside the runs of `output.dir`."""
    return Path(output_dir) / ".cache" / "data"


def data_files(data: DataConfig) -> list[str]:
    """Every file the data stage reads: training datasets, their held-out files, replay, contamination,
    and a chat template file (its bytes decide the tokens)."""
    return list(data_file_roles(data).values())


def data_file_roles(data: DataConfig) -> dict[str, str]:
    """The same files by the recipe path that names each (`data.train`, `data.train[1].test`,
    `data.contamination[0]`), so two runs' files can be compared role by role."""
    single = isinstance(data.train, str)
    roles: dict[str, str | None] = {}
    for i, source in enumerate(data.sources):
        where = "data.train" if single else f"data.train[{i}]"
        roles[where if single else f"{where}.path"] = source.path
        roles[f"{where}.validation"], roles[f"{where}.test"] = source.validation, source.test
    roles["data.replay.path"] = data.replay.path if data.replay else None
    roles["data.validation"], roles["data.test"] = data.validation, data.test
    roles.update({f"data.contamination[{i}]": path for i, path in enumerate(data.contamination)})
    roles["data.template"] = data.template if data.template not in BUILTIN_TEMPLATE_NAMES else None
    return {role: str(path) for role, path in roles.items() if path}


def file_digests(data: DataConfig) -> dict[str, str]:
    """Each data file's sha256 by its recipe path (a Hub dataset: its id), recorded in summary.json: two
    runs of one recipe on a file that changed in place are two runs on different data."""
    return {role: _source_digest(path) for role, path in data_file_roles(data).items()}


def cache_key(recipe: Recipe, tokenizer: Any) -> str:
    """Everything the prepared data depends on: the files' bytes, the data section, and the few other
    settings the data stage reads (task, KTO, length, packing, seed), so any change to them misses."""
    parts = {
        "version": __version__,
        "format": CACHE_FORMAT,
        "task": recipe.task,
        "files": {f: _source_digest(f) for f in data_files(recipe.data)},
        "data": recipe.data.model_dump(mode="json"),
        "max_seq_len": recipe.train.max_seq_len,
        "packing": recipe.packing,
        "seed": recipe.train.seed,  # splits and balancing draw from it
        "canaries": recipe.eval.canaries.model_dump() if recipe.eval.canaries else None,  # put in train
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    if recipe.preference.objective == "kto":  # the same pairs tokenise into other examples for KTO
        parts["unpaired"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def data_digest(data: DataConfig) -> str:
    """sha256 over the data section's files (their bytes), for the run registry."""
    parts = {f: _source_digest(f) for f in data_files(data)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    parts = [
        vocab,
        tokenizer.all_special_tokens,
        getattr(tokenizer, "chat_template", None),
        type(tokenizer).__name__,
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _source_digest(source: str) -> str:
    # A Hub dataset is keyed by its id: pin it with @revision for the cache to follow upstream changes.
    if source.startswith("hf:"):
        return source
    stat = Path(source).stat()
    return _file_digest(source, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, _inode: int, _size: int, _mtime_ns: int) -> str:
    """A file is hashed for the cache key, the registry and summary.json alike: once per process while
    it is unchanged (the stat is part of the key, so a file rewritten in between is hashed again)."""
    return file_sha256(Path(path))


def load(root: Path, key: str) -> tuple[PreparedData, Path] | None:
    """The cached result and the folder of its written splits, or None on a miss or a damaged entry."""
    entry = root / key
    try:
        raw = json.loads((entry / "prepared.json").read_text(encoding="utf-8"))
        prepared = PreparedData(
            splits=raw["splits"],
            stats={},
            label_map=raw["label_map"],
            chat_template=raw["chat_template"],
            notes=raw["notes"],
            report=raw["report"],
            packed=raw["packed"],
            tools=raw.get("tools", False),  # entries from before function calling have none
        )
    except (OSError, ValueError, KeyError):
        return None
    return prepared, entry / "data"


def save(root: Path, key: str, prepared: PreparedData, written: Path) -> None:
    """Store the prepared data and the split files already written for the run (`written`)."""
    entry, tmp = root / key, root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    for name in SPLIT_FILES:
        if (written / name).is_file():
            shutil.copy2(written / name, tmp / "data" / name)
    payload = {
        "splits": prepared.splits,
        "label_map": prepared.label_map,
        "chat_template": prepared.chat_template,
        "notes": prepared.notes,
        "report": prepared.report,
        "packed": prepared.packed,
        "tools": prepared.tools,
    }
    (tmp / "prepared.json").write_text(json.dumps(payload), encoding="utf-8")
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)
