"""Where a model comes from, and how its embeddings fit its tokenizer.

`model.name` is a local folder, a .gguf file (or a folder of one: dequantised once into a cached folder,
models/gguf.py), or a Hugging Face Hub id; `check_model` checks what can be checked without loading.
Loading (load.py), another run's adapter merged as the base loads (base_adapter.py) and restoring a run
(restore.py) all resolve names and grow embeddings here, so they agree on both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import ModelLoadError
from tunelab.models.files import check_hub_cache, check_model_folder
from tunelab.models.gguf import converted_folder, gguf_file

if TYPE_CHECKING:
    from tunelab.config import ModelConfig


def model_source(name: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder). A .gguf file (or a folder of one)
    resolves to its converted folder. A path that names no folder is an error here; a Hub id is
    checked only when loading."""
    gguf = gguf_file(name)
    if gguf is not None:  # dequantised once into a plain folder (models/gguf.py)
        return str(converted_folder(gguf)), True
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), True
    if path.is_file():
        raise ModelLoadError(
            f"model.name {path.resolve()} is a file, not a model folder",
            fix=f"point model.name at the folder that holds it ({path.resolve().parent}), or at a .gguf file "
            "or a Hub id (org/name)",
        )
    # Hub ids are "name" or "org/name"; anything else that names a folder is a path that is missing.
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or path.exists():
        raise ModelLoadError(
            f"model folder not found: {path.resolve()}",
            fix="point model.name at a folder holding config.json and the weights, or at a Hub id (org/name)",
        )
    return name, False


def check_model(cfg: ModelConfig) -> tuple[str, bool]:
    """model_source, and what can be checked without loading: a local folder's config and weight files
    (a damaged file is named as such), or, offline, that the Hub id is in the local cache."""
    source, local = model_source(cfg.name)
    if local:
        check_model_folder(Path(source))
    elif hub_offline():
        check_hub_cache(cfg.name, cfg.revision)
    return source, local


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def fit_embeddings_to(tokenizer: Any, model: Any) -> None:
    """Grow the embeddings when the tokenizer has tokens the model has no row for: a chat template's
    markers added by the data stage, and so also a trained adapter's tokenizer over its original base.
    New rows start at the mean of the old ones (transformers' mean_resizing); vocabularies padded past
    the tokenizer's size are left as they are."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
