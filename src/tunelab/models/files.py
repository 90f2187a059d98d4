"""What can be known about a model without loading it: the folder holds a config and readable weights, or
the Hub id is in the local cache when the Hub cannot be reached.

`validate` runs these so that its `ok` means `train` will find the model; `load_model` runs the weights
check first, so a damaged file is named as such instead of surfacing as safetensors' own error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunelab.errors import ModelLoadError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def check_model_folder(folder: Path) -> None:
    """config.json parses, and every safetensors file's header is whole (a cut-short download or a full
    disk leaves a file whose header promises more bytes than it holds)."""
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"model folder {folder} has no config.json",
            fix="point model.name at the folder that holds config.json and the weights (a Hub download's "
            "snapshot folder, or a `tunelab export` folder)",
        )
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"model folder {folder}: config.json cannot be read ({exc})",
            fix="the file is damaged; copy or download the model again",
        ) from None
    if not any(path.suffix in WEIGHT_SUFFIXES for path in folder.iterdir()):
        raise ModelLoadError(
            f"model folder {folder} holds no weights (*.safetensors)",
            fix="copy the weight files next to config.json, or download the model again",
        )
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights)


def check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass  # opening reads and checks the header against the file's size; no tensor is read
    except (SafetensorError, OSError) as exc:
        state = f"{path.stat().st_size:,} bytes" if path.exists() else "a link to a file that is gone"
        raise ModelLoadError(
            f"{path} cannot be read: {exc}. The file is damaged or incomplete ({state})",
            fix="copy or download the model again; an interrupted download or a full disk leaves such a file",
        ) from None


def check_hub_cache(name: str, revision: str | None) -> None:
    """Offline, a Hub id can only come from the local cache: say so now rather than when loading."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return
    raise ModelLoadError(
        f"model {name!r} is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it",
        fix=f"download it once with network access (huggingface-cli download {name}), unset HF_HUB_OFFLINE, "
        "or point model.name at a local folder or .gguf file",
    )
