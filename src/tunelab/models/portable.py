"""`make_portable`, applied to every folder tunelab writes for other tools to load (final/, exports,
converted GGUF bases): transformers 5.x saves a few settings under names that 4.x, which vLLM and
llama.cpp's converter often still run on, cannot read. It imports nothing of tunelab's, so the model
loader, the GGUF converter and export can all use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# transformers 5.x tokenizer classes 4.x lacks, and the 4.x class that loads the same tokenizer.json
# (5.x loads it as the same class: PreTrainedTokenizerFast is 5.x's alias of TokenizersBackend).
CLASSES_FOR_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def make_portable(folder: Path) -> None:
    """Rewrite what transformers 5.x saved in `folder` so that 4.x loads the same tokenizer and model.

    Settings are copied under 4.x's names (and 5.x's implied defaults written out), never changed; a
    folder that needs nothing is left untouched (not rewritten)."""
    _update_json(folder / "tokenizer_config.json", lambda config: _portable_tokenizer(config, folder))
    _update_json(folder / "config.json", _portable_rope)


def _portable_tokenizer(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    config = dict(config)
    if config.get("tokenizer_class") in CLASSES_FOR_4X and (folder / "tokenizer.json").is_file():
        config["tokenizer_class"] = CLASSES_FOR_4X[config["tokenizer_class"]]
    if config.get("tokenizer_class") == "PreTrainedTokenizerFast":
        from transformers import PreTrainedTokenizerFast

        # The class defaults differ: 4.x's also returns token_type_ids, which a causal LM's generate()
        # refuses. 5.x's default, written out, means the same inputs in both.
        config.setdefault("model_input_names", list(PreTrainedTokenizerFast.model_input_names))
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        # 5.x's list of extra special tokens; in 4.x that key is a dict of named tokens (a list fails to
        # load), and the list is additional_special_tokens, which 5.x also reads.
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = [*(config.get("additional_special_tokens") or []), *extra]
    return config


def _portable_rope(config: dict[str, Any]) -> dict[str, Any]:
    """5.x keeps RoPE settings only in rope_parameters; 4.x reads rope_theta (and rope_scaling, and
    partial_rotary_factor) and, without them, silently uses its defaults (rope_theta 10000): another model.
    Per-layer-type (nested) rope_parameters are model-specific in 4.x and left as they are."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        return config
    config = dict(config)
    config.setdefault("rope_theta", rope["rope_theta"])
    if "partial_rotary_factor" in rope:
        config.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    if rope.get("rope_type", "default") != "default" and config.get("rope_scaling") is None:
        config["rope_scaling"] = {
            key: value for key, value in rope.items() if key not in ("rope_theta", "partial_rotary_factor")
        }
    return config


def _update_json(path: Path, change: Any) -> None:
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    after = change(before)
    if after == before:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(after, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers (another rank, on a cached base) see the old file or the new one
