"""Hugging Face Hub datasets as a data source: `hf:org/name[@revision][:split]`.

We download the dataset repository's data files (parquet, JSONL, JSON, CSV/TSV, optionally gzipped)
with huggingface_hub and read them with our own readers, so a bad row in a Hub dataset is reported
as `file:line: reason` like any local file. The `datasets` library would add a large dependency for
what amounts to choosing files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import DataError

PREFIX = "hf:"
SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+?))?(?::(?P<split>[\w-]+))?$")
DATA_PATTERNS = ["*.parquet", "*.jsonl", "*.json", "*.csv", "*.tsv", "*.jsonl.gz", "*.json.gz", "*.csv.gz"]
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


@dataclass(frozen=True)
class HubSpec:
    repo: str
    revision: str | None
    split: str


def is_hub_spec(value: str) -> bool:
    return value.startswith(PREFIX)


def parse_spec(value: str, default_split: str = "train") -> HubSpec:
    match = SPEC.match(value)
    if match is None:
        raise DataError(
            f"{value!r} is not a Hub dataset id",
            fix="write hf:org/name, hf:org/name:test or hf:org/name@revision",
        )
    return HubSpec(match["repo"], match["revision"], match["split"] or default_split)


def download(spec: HubSpec) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    try:
        folder = snapshot_download(
            spec.repo,
            repo_type="dataset",
            revision=spec.revision,
            allow_patterns=DATA_PATTERNS,
            local_files_only=offline,
        )
    except Exception as exc:  # the hub client raises many types; the user needs one message
        where = "the local cache (HF_HUB_OFFLINE=1 is set)" if offline else "the Hugging Face Hub"
        raise DataError(
            f"dataset {spec.repo!r} could not be fetched from {where}: {type(exc).__name__}: {exc}",
            fix="check the id and your connection (or log in for gated datasets), or download the files and "
            "point data.train at them",
        ) from None
    return Path(str(folder))


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of one split: those whose path names the split (train-00000-of-00002.parquet,
    data/validation.jsonl, ...); a repository with a single data file serves as train."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and any(p.match(pat) for pat in DATA_PATTERNS))
    aliases = SPLIT_ALIASES.get(split, (split,))
    chosen = [
        p
        for p in files
        if any(re.search(rf"(^|[/_.-]){a}([/_.-]|$)", str(p.relative_to(folder))) for a in aliases)
    ]
    if not chosen and split == "train" and len(files) == 1:
        chosen = files
    if not chosen:
        names = ", ".join(str(p.relative_to(folder)) for p in files) or "none"
        raise DataError(
            f"no {split!r} files in the dataset (its data files: {names})",
            fix="name a split: hf:org/name:SPLIT",
        )
    return chosen
