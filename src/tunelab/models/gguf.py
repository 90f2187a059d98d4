"""GGUF bases: `model.name` may be a .gguf file (llama.cpp's format), or a folder holding one.

transformers reads a GGUF file by dequantising every tensor, 13-16 s for a 135M model here, and
the model it returns carries a GGUF "quantizer" that `save_pretrained` refuses. So tunelab
dequantises a file once, into a plain folder (safetensors, the tokenizer, the chat template) in the
user's cache, keyed by the file's sha256, and from then on trains from that folder like any local
model (about 1-3 s to load). The folder is written under a temporary name and renamed when complete,
so an interrupted conversion never looks finished; `source.json`, written into it before the rename,
records where the weights came from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelab.errors import ModelLoadError
from tunelab.hashing import file_sha256
from tunelab.models.portable import make_portable

SUFFIX = ".gguf"
SOURCE_FILE = "source.json"  # in a converted folder: the GGUF file it came from


def cache_root() -> Path:
    """Where converted bases live: $TUNELAB_CACHE, else ~/.cache/tunelab (beside Hugging Face's cache)."""
    return Path(os.environ.get("TUNELAB_CACHE") or Path.home() / ".cache" / "tunelab")


def gguf_file(name: str) -> Path | None:
    """The .gguf file `name` means: the file itself, or the one .gguf in a folder without config.json.
    None for anything else (a model folder, a Hub id)."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == SUFFIX:
        return path.resolve()
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(path.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        raise ModelLoadError(
            f"model folder {path} holds {len(found)} GGUF files ({', '.join(f.name for f in found)})",
            fix="point model.name at the one to train",
        )
    return found[0].resolve() if found else None


def converted_folder(gguf: Path) -> Path:
    """The plain model folder for `gguf`, converting it the first time it is asked for."""
    stat = gguf.stat()
    return _converted(gguf, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)  # one hash per file and process: validate, plan and train all resolve the name
def _converted(gguf: Path, size: int, mtime_ns: int) -> Path:
    digest = file_sha256(gguf)
    folder = cache_root() / "gguf" / f"{gguf.stem}-{digest[:16]}"
    if not (folder / SOURCE_FILE).exists():
        _convert(gguf, folder, {"gguf": str(gguf), "sha256": digest, "bytes": size})
    else:  # a folder an older tunelab converted is made portable too (a no-op for a newer one)
        make_portable(folder)
    return folder


def _convert(gguf: Path, folder: Path, source: dict[str, Any]) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"model: dequantising {gguf.name} once, into {folder} ...")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model, tokenizer = _read(gguf)
        model.save_pretrained(tmp)  # safetensors, in the dtype the file dequantised to (float32)
        tokenizer.save_pretrained(tmp)
        _drop_tokens_past(tmp, model.get_input_embeddings().num_embeddings)
        # An adapter export names this folder as its base: vLLM and others (often on transformers 4.x)
        # load it too.
        make_portable(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        folder.parent.mkdir(parents=True, exist_ok=True)
        if (folder / SOURCE_FILE).exists():  # another process (a DDP rank) finished first
            return
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(gguf: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"{gguf}: transformers could not read this GGUF file: {exc}",
            fix="transformers reads GGUF files of the architectures it lists in its GGUF docs "
            "(Llama, Mistral, Qwen2, Phi-3, Gemma, ...); check the file is complete (its sha256)",
        ) from None
    # The weights are plain tensors now; without the quantizer and its config, save_pretrained writes
    # an ordinary checkpoint that loads without the gguf package.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _drop_tokens_past(folder: Path, rows: int) -> None:
    """Remove tokens the GGUF file does not have from the saved tokenizer.

    transformers builds a byte-level GGUF vocabulary with GPT2Tokenizer, whose defaults add
    `<|endoftext|>` to any vocabulary lacking it (a Llama-3 file, say). The model has no embedding row
    for it, so loading would grow the embeddings and change the model: the converted base would no
    longer be the file's. Such tokens are taken out of tokenizer.json and tokenizer_config.json.
    """
    spec_path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    extra = [token["content"] for token in spec.get("added_tokens", []) if token["id"] >= rows]
    if not extra:
        return
    spec["added_tokens"] = [token for token in spec["added_tokens"] if token["id"] < rows]
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder", {})
    config["added_tokens_decoder"] = {key: value for key, value in decoder.items() if int(key) < rows}
    for key, value in list(config.items()):
        if isinstance(value, str) and value in extra:  # a special-token slot that named it
            config[key] = None
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def source_of(folder: str | Path) -> dict[str, Any] | None:
    """Where a converted folder's weights came from ({gguf, sha256, bytes}); None for other folders."""
    path = Path(folder) / SOURCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# Where llama.cpp's converter records the Hugging Face model a GGUF file holds, best first: the legacy key
# (a bare Hub id), then the source's repository or page (from the model card's repo_url / url).
# general.base_model.N is not used: it is the *parent* of the file's model (an instruct model's base).
HUB_ID_KEYS = ("general.source.huggingface.repository", "general.source.repo_url", "general.source.url")
# A model repository's page; the site's other pages (datasets, papers, ...) are not models.
HUB_URL = re.compile(
    r"^https?://huggingface\.co/"
    r"(?!(?:datasets|spaces|papers|docs|blog|collections|organizations|posts|models|api)/)([^/?#]+/[^/?#]+)"
)


def hub_id(gguf: Path) -> str | None:
    """The Hub id (org/name) of the model in a GGUF file, from its metadata; None when it names none.

    Also general.name when it is an org/name id: `convert_hf_to_gguf.py --remote ID` names the file so
    (otherwise general.name is a title such as "Smollm2 135M 8k Lc100K Mix1 Ep2")."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf)
    except (OSError, ValueError) as exc:  # transformers read the weights; only the card would lack the id
        from rich.console import Console

        Console(stderr=True).print(f"note: {gguf.name}: its metadata could not be read ({exc}); no Hub id")
        return None
    for key in (*HUB_ID_KEYS, "general.name"):
        field = reader.get_field(key)
        value = str(field.contents()) if field is not None else ""
        match = HUB_URL.match(value)
        candidate = match.group(1) if match else value
        if candidate and (key != "general.name" or "/" in candidate) and is_hub_id(candidate):
            return candidate
    return None


def is_hub_id(text: str) -> bool:
    """Whether `text` is a valid Hub repository id (name or org/name)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True
