"""Load a pre-trained model and its tokenizer from a local folder or the Hugging Face Hub."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from transformers import AutoTokenizer

from tunelab.config import ModelConfig, Recipe
from tunelab.errors import ModelLoadError
from tunelab.models.base_adapter import adapter_tokenizer, merge_base_adapter, resolve_adapter
from tunelab.models.precision import resolve_weights
from tunelab.models.source import check_model, fit_embeddings_to, hub_offline, model_source
from tunelab.tasks.registry import task_spec

Quantisation = Literal["4bit", "8bit"]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str
    # Modules whose weights were not in the checkpoint (a new classification head): they must train.
    new_modules: list[str] = field(default_factory=list)


def load_model(
    cfg: ModelConfig,
    task: str,
    label_map: dict[str, int] | None = None,
    tokenizer: Any = None,
    *,
    quantisation: Quantisation | None = None,
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """The model with its tokenizer (pass `tokenizer` when it was already loaded for the data stage).

    `quantisation` loads the frozen base through bitsandbytes ("4bit": qlora; "8bit"); by default it
    follows `cfg.load_in_8bit`. See `quantisation_for`. `dtype` overrides `cfg.dtype` (training
    resolves it with the method and precision: models/precision.py). `cfg.adapter`, another run's
    adapter, is merged into the weights (models/base_adapter.py), with that run's tokenizer.
    """
    source, local = check_model(cfg)
    adapter = _resolved_adapter(cfg, task)  # refused before any weights are read
    common: dict[str, Any] = {
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
        "local_files_only": local or hub_offline(),
    }
    quantisation = quantisation or ("8bit" if cfg.load_in_8bit else None)
    try:
        if tokenizer is None and adapter is not None:
            tokenizer = adapter_tokenizer(adapter)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, **common, **tokenizer_options(task))
        weights_options = {**common, **quantisation_options(quantisation, task)}
        model, info = _load_weights(
            source, task, label_map, dtype or resolve_weights(cfg.dtype), weights_options
        )
    except (OSError, ValueError) as exc:
        raise _not_loadable(cfg.name, source, local, exc, task) from None
    _ensure_pad_token(tokenizer, model)
    if adapter is not None:
        model = merge_base_adapter(model, adapter)
    fit_embeddings_to(tokenizer, model)  # after the merge: this run may add tokens of its own
    new_modules = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, new_modules=new_modules)


def quantisation_for(method_name: str, load_in_8bit: bool) -> Quantisation | None:
    """How a recipe's base is loaded: 4-bit NF4 under qlora, 8-bit when model.load_in_8bit, else unquantised."""
    from tunelab.methods.registry import method_spec

    return method_spec(method_name).quantised_base or ("8bit" if load_in_8bit else None)


def quantisation_options(quantisation: Quantisation | None, task: str) -> dict[str, Any]:
    """from_pretrained keywords for a bitsandbytes base (the recipe validator has checked for CUDA)."""
    if quantisation is None:
        return {}
    if not bitsandbytes_installed():
        raise ModelLoadError(
            f"a {quantisation} base is loaded through bitsandbytes, which is not installed",
            fix="pip install bitsandbytes (needs a CUDA GPU), or use method lora over an unquantised base",
        )
    from transformers import BitsAndBytesConfig

    # A new head (a classifier's) is trained in full: keep it (and BERT's pooler) out of bitsandbytes.
    # transformers' own default keeps only the module of the *last parameter*, which misses a head whose
    # last parameter is a bias ("classifier.bias"). Causal LMs keep their defaults (lm_head).
    skip = list(task_spec(task).head.new_modules) or None
    if quantisation == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_compute_dtype(),
            llm_int8_skip_modules=skip,  # despite the name, 4-bit loading reads it too
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    # One whole copy per process, on that process's GPU (under DDP, LOCAL_RANK names it).
    return {"quantization_config": config, "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _compute_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def tokenizer_options(task: str | None) -> dict[str, Any]:
    """A tagger's words arrive pre-split, and a byte-level BPE (RoBERTa, GPT-2) then encodes each word
    without the space that preceded it in pre-training ("Lisbon", not " Lisbon") unless told to add
    one; tokenizers without the option (WordPiece) ignore it."""
    return {"add_prefix_space": True} if task is not None and task_spec(task).head.word_level else {}


def load_tokenizer(cfg: ModelConfig, task: str | None = None) -> Any:
    """The tokenizer alone (for data inspection and preparation: no weights are read); with
    model.adapter, that run's saved tokenizer (its chat template and added tokens)."""
    source, local = model_source(cfg.name)
    adapter = _resolved_adapter(cfg, task)
    if adapter is not None:
        return adapter_tokenizer(adapter)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            local_files_only=local or hub_offline(),
            **tokenizer_options(task),
        )
    except (OSError, ValueError) as exc:
        raise _not_loadable(cfg.name, source, local, exc) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


# Where configs keep the longest sequence the model has positions for (GPT-2: n_positions).
POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def position_limit(cfg: ModelConfig) -> int | None:
    """The most token positions the model has (None when its config does not say, or cannot be read
    here). RoBERTa-style models spend two of theirs on the padding offset."""
    from transformers import AutoConfig

    try:
        source, local = model_source(cfg.name)
        config = AutoConfig.from_pretrained(
            source,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision,
            local_files_only=local or hub_offline(),
        )
    except (OSError, ValueError, ModelLoadError):
        return None  # loading the model reports why, with its own message
    config = getattr(config, "text_config", None) or config
    limit = next(
        (getattr(config, key) for key in POSITION_LIMIT_KEYS if isinstance(getattr(config, key, None), int)),
        None,
    )
    if limit is not None and "roberta" in str(getattr(config, "model_type", "")):
        limit -= 2
    return limit


def check_sequence_length(recipe: Recipe) -> None:
    """Refuse, before any work, a train.max_seq_len the model has no positions for: past its limit a
    BERT fails deep inside the forward pass with a tensor-size error, and a rotary model runs on
    positions it never saw. The virtual tokens of prefix and prompt tuning take positions too."""
    cfg, max_seq_len = recipe.model, recipe.train.max_seq_len
    virtual_tokens = int(getattr(recipe.method, "num_virtual_tokens", 0) or 0)
    limit = position_limit(cfg)
    needed = max_seq_len + virtual_tokens
    if limit is None or needed <= limit:
        return
    extra = f" plus {virtual_tokens} virtual tokens" if virtual_tokens else ""
    raise ModelLoadError(
        f"train.max_seq_len: {max_seq_len}{extra} is more than {cfg.name} has positions for ({limit})",
        fix=f"set train.max_seq_len to {limit - virtual_tokens} or less (--set train.max_seq_len={limit - virtual_tokens})",
    )


def _load_weights(
    source: str, task: str, label_map: dict[str, int] | None, dtype: torch.dtype, common: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The task's head (tasks/registry.py: its Auto class, sized to the labels or one score)."""
    head = task_spec(task).head
    outputs: dict[str, Any] = {}
    if head.outputs == "score":  # one scalar per sequence (a Bradley-Terry reward model)
        outputs = {"num_labels": 1}
    elif head.outputs == "labels":
        assert label_map is not None
        id2label = {i: name for name, i in label_map.items()}
        outputs = {"num_labels": len(label_map), "label2id": dict(label_map), "id2label": id2label}
    auto = getattr(transformers, head.auto_class)
    return auto.from_pretrained(source, dtype=dtype, output_loading_info=True, **outputs, **common)


def _resolved_adapter(cfg: ModelConfig, task: str | None) -> Path | None:
    if cfg.adapter is None:
        return None
    return resolve_adapter(cfg, task)


# transformers' words when a config has no model class for the Auto class asked (a T5 for a causal LM).
_NO_HEAD = "Unrecognized configuration class"


def _not_loadable(
    name: str, source: str, local: bool, exc: Exception, task: str | None = None
) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _NO_HEAD in reason:
        # The folder is fine; the architecture cannot be the model this task needs.
        found = re.search(r"\.(\w+)Config'", reason)
        architecture = f"a {found.group(1)} model" if found else "this architecture"
        head = task_spec(task or "sft").head
        return ModelLoadError(
            f"model {name}: {architecture} cannot be loaded as {head.description} by transformers",
            fix=head.hint,
        )
    if local:
        return ModelLoadError(
            f"model folder {source} could not be loaded: {reason}",
            fix="the folder needs config.json, the weights (*.safetensors) and the tokenizer files",
        )
    where = (
        "the local Hugging Face cache (HF_HUB_OFFLINE=1 is set)" if hub_offline() else "the Hugging Face Hub"
    )
    return ModelLoadError(
        f"model {name!r} not found: tried a local folder {Path(name).resolve()} (does not exist) "
        f"and {where}: {reason}",
        fix="check the Hub id, log in for gated models (huggingface-cli login), or point model.name "
        "at a local folder",
    )


def _ensure_pad_token(tokenizer: Any, model: Any) -> None:
    """Batches are padded; models without a pad token pad with EOS (masked out of attention and loss)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ModelLoadError("the tokenizer has no pad, eos or unk token to pad batches with")
    if getattr(model.config, "pad_token_id", None) is None:
        # Sequence-classification heads of decoder models find the last real token through it.
        model.config.pad_token_id = tokenizer.pad_token_id
