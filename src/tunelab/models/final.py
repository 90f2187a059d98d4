"""final/: what a finished run leaves to restore, export and serve (models/restore.py reads it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.models.adapters import is_bottleneck, save_bottleneck
from tunelab.models.gguf import gguf_file, hub_id, is_hub_id, source_of
from tunelab.models.methods import is_adapter
from tunelab.models.portable import make_portable
from tunelab.models.source import model_source

if TYPE_CHECKING:
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData


def save_final(
    model: Any, tokenizer: Any, run_dir: Path, recipe: Recipe, data: PreparedData, precision: dict[str, str]
) -> Path:
    """Write final/ (weights in safetensors, tokenizer, label map) to a temp folder, then rename.

    tunelab.json records the precision the run trained in, so a restore computes as training did."""
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if is_bottleneck(model):  # our own adapters: their weights and settings only, like a peft adapter
        save_bottleneck(model, tmp)
    elif is_adapter(model):
        # Only the adapter: tokens the data stage added are in it as trained rows (trainable tokens), so
        # peft's copy of the whole resized embedding matrices is not needed (restore grows the base).
        model.save_pretrained(str(tmp), save_embedding_layers=False)
    else:
        model.save_pretrained(str(tmp))  # safetensors
    tokenizer.save_pretrained(str(tmp))  # carries the chat template used, so inference renders alike
    make_portable(tmp)
    merged_from = _keep_base_adapter(model, recipe, tmp)
    info = {
        "task": recipe.task,
        "method": recipe.method.name,
        "base_model": recipe.model.name,
        # The model card's base_model: a Hub id, never a local path.
        "base_hub_id": base_hub_id(recipe.model.name, recipe.model.hub_id),
        "weights_from": source_of(model_source(recipe.model.name)[0]),  # a GGUF base's file, or null
        "chat_template": data.chat_template,
        # Written into every training conversation, so inference writes them the same way.
        "system_prompt": recipe.data.system_prompt,
        "prompt_template": recipe.data.prompt_template,
        "added_tokens": data.added_tokens,  # the base needs rows for them (resize_token_embeddings)
        "precision": precision,
        "base_adapter": merged_from,  # model.adapter: the run merged into the base (a copy in base_adapter/)
    }
    (tmp / "tunelab.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if data.label_map is not None:
        (tmp / "labels.json").write_text(json.dumps(data.label_map, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _keep_base_adapter(model: Any, recipe: Recipe, tmp: Path) -> dict[str, str] | None:
    """model.adapter's final/, copied into final/base_adapter/ when this run's weights are an adapter
    over it, so restoring needs this folder only. Full weights already hold the merged adapter."""
    if recipe.model.adapter is None:
        return None
    from tunelab.models.base_adapter import BASE_ADAPTER, resolve_adapter
    from tunelab.models.saved import read_info

    source = resolve_adapter(recipe.model)
    if is_bottleneck(model) or is_adapter(model):
        shutil.copytree(source, tmp / BASE_ADAPTER)
    info = read_info(source)
    return {"from": str(source.resolve()), "task": info["task"], "method": info["method"]}


def base_hub_id(name: str, declared: str | None = None) -> str | None:
    """The base model's Hugging Face Hub id: `declared` when given, a GGUF file's own (from its
    metadata), `name` itself when it is a Hub id; None for a local folder, or a file that names none."""
    if declared:
        return declared
    gguf = gguf_file(name)
    if gguf is not None:
        return hub_id(gguf)
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None  # a local folder: the Hub does not know it
    return name if is_hub_id(name) else None
