"""Hugging Face Hub datasets as a data source: `hf:org/name[@revision][:split]`.

We download the dataset repository's data files (parquet, JSONL, JSON, CSV/TSV, optionally gzipped)
with huggingface_hub and read them with our own readers, so a bad row in a Hub dataset is reported
as `file:line: reason` like any local file. The `datasets` library would add a large dependency for
what amounts to choosing files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunelab.config.hub_spec import HubSpec, is_hub_spec, parse_spec
from tunelab.errors import DataError

# The spec's form is the recipe's (config/hub_spec.py), checked when it is validated; the data stage
# finds it here too, beside the fetching.
__all__ = ["HubSpec", "download", "is_hub_spec", "parse_spec", "split_files"]

DATA_PATTERNS = ["*.parquet", "*.jsonl", "*.json", "*.csv", "*.tsv", "*.jsonl.gz", "*.json.gz", "*.csv.gz"]
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


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
