"""Rebuild a trained model from a run's final/ folder (or from an export of it).

final/ holds `tunelab.json` ({task, method, base_model, chat_template}), the tokenizer saved with the
chat template used in training, an optional `labels.json`, and the weights in one of three shapes:

- full weights (`config.json` + safetensors): full and freeze runs, and merged exports;
- a peft adapter (`adapter_config.json`): lora, dora, qlora, ia3, prefix, prompt; it goes onto its base;
- a bottleneck adapter (`bottleneck_adapter.json` + weights): inserted into its base by
  `tunelab.models.adapters.load_bottleneck`.

A run trained over another run's adapter (`model.adapter`) keeps that run's final/ in `base_adapter/`;
it is merged into the base before this run's adapter goes on (models/base_adapter.py).

Evaluation, export and inference all load through `load_trained`, so they see the same model. What a
final/ folder holds is read, without loading weights, by models/saved.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from tunelab.config import ModelConfig
from tunelab.errors import TunelabError
from tunelab.models.base_adapter import BASE_ADAPTER
from tunelab.models.load import load_model
from tunelab.models.precision import COMPUTE_DTYPES, Precision, resolve_weights, weights_dtype
from tunelab.models.saved import (
    LABELS,
    adapter_kind,
    find_final,
    load_saved_tokenizer,
    read_info,
    read_label_map,
    resolve_final,
    run_dir_of,
)
from tunelab.tasks.registry import task_spec

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class Trained:
    model: Any
    tokenizer: Any
    task: str
    method: str
    label_map: dict[str, int] | None
    info: dict[str, Any]  # tunelab.json
    final_dir: Path
    run_dir: Path | None  # the run folder when final_dir is a run's final/, else None
    precision: Precision  # what forward passes run in: the run's own unless the caller chose another

    @property
    def generative(self) -> bool:
        return task_spec(self.task).head.generative

    @property
    def recipe_dir(self) -> Path | None:
        """Where the training recipe.yaml is: the run folder, or an export (which carries a copy), so
        eval and predict read an export's files as training read its own."""
        if self.run_dir is not None:
            return self.run_dir
        return self.final_dir if (self.final_dir / "recipe.yaml").is_file() else None


def load_trained(path: str | Path, *, dtype: Dtype = "auto", precision: str = "trained") -> Trained:
    """The trained model (in eval mode) and its tokenizer, from a run folder or a final/ folder.

    `precision` "trained" rebuilds the model as the run trained it (tunelab.json's precision: the base's
    weight dtype, float32 trainable weights, the autocast its forward passes ran under), so its numbers
    reproduce; "fp32", "bf16" or "fp16" choose another. `dtype`, when not auto, overrides the weights'
    dtype (export merges in float32). The base is never quantised here, even when training used a
    4-bit base: an adapter applies to the full-precision weights it was derived from.
    """
    final = resolve_final(path)
    info = read_info(final)
    chosen = restored_precision(info, precision)
    if dtype != "auto":
        chosen = Precision(compute=chosen.compute, weights=resolve_weights(dtype))
    label_map = read_label_map(final)
    if task_spec(info["task"]).head.outputs == "labels" and label_map is None:
        raise TunelabError(f"{final}: a classifier needs its label map ({LABELS}), which is missing")
    head = info["task"]  # load_model builds the task's head (tasks/registry.py)
    kind = adapter_kind(final)
    run_dir = run_dir_of(final)
    weights = chosen.weights
    tokenizer = load_saved_tokenizer(final)
    if kind is None:  # full weights, in final/ itself
        model = load_model(model_config(str(final), run_dir), head, label_map, tokenizer, dtype=weights).model
    else:
        # With the run's tokenizer, the base grows rows for any tokens training added (a template's
        # markers); the adapter holds what those rows learned.
        config = model_config(info["base_model"], run_dir)
        if (final / BASE_ADAPTER).is_dir():  # trained over another run's adapter: merged in first
            config = config.model_copy(update={"adapter": str(final / BASE_ADAPTER)})
        base = load_model(config, head, label_map, tokenizer, dtype=weights).model
        # Under autocast the trained weights were float32 masters over the base's dtype.
        trainable_dtype = torch.float32 if chosen.compute != "fp32" else None
        model = _attach_adapter(base, final, kind, trainable_dtype)
    model.eval()
    return Trained(
        model=model,
        tokenizer=tokenizer,
        task=info["task"],
        method=info["method"],
        label_map=label_map,
        info=info,
        final_dir=final,
        run_dir=run_dir,
        precision=chosen,
    )


def restored_precision(info: dict[str, Any], requested: str) -> Precision:
    """The precision a restore computes in: the run's recorded one ("trained"), or the one asked for,
    with the weight dtype training would have used for it."""
    if requested == "trained":
        recorded = info.get("precision")
        if recorded is None:  # a run from before precision was recorded: no autocast, as then
            return Precision(compute="fp32", weights=resolve_weights("auto"))
        return Precision.from_dict(recorded)
    if requested not in COMPUTE_DTYPES:
        raise TunelabError(
            f"precision {requested!r}: choose trained, {', '.join(COMPUTE_DTYPES)}",
            fix="trained (the default) computes as the run did",
        )
    return Precision(compute=requested, weights=weights_dtype(info["method"], requested))


def model_config(name: str, run_dir: Path | None) -> ModelConfig:
    """Load `name` with the run's trust_remote_code (a model with custom code needs it for its
    fine-tuned weights too) and, for the base, its revision: both from recipe.yaml."""
    section = read_recipe(run_dir).get("model")
    recipe_model = section if isinstance(section, dict) else {}
    is_base = name == recipe_model.get("name")
    # load_in_8bit is left out on purpose: a restored model is never quantised.
    return ModelConfig(
        name=name,
        revision=recipe_model.get("revision") if is_base else None,
        trust_remote_code=bool(recipe_model.get("trust_remote_code", False)),
    )


def read_recipe(run_dir: Path | None) -> dict[str, Any]:
    """The run's recipe.yaml as plain YAML ({} without one). Not validated on purpose: its data files
    may have moved since training, and only a few settings are read from it."""
    path = run_dir / "recipe.yaml" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return raw if isinstance(raw, dict) else {}


def _attach_adapter(base: Any, final: Path, kind: str, trainable_dtype: torch.dtype | None) -> Any:
    if kind == "bottleneck":
        # Written alongside this module by the adapter method; imported only when such a run is loaded.
        from tunelab.models.adapters import load_bottleneck  # type: ignore[import-not-found,unused-ignore]

        loaded = load_bottleneck(base, final, trainable_dtype=trainable_dtype)
        return base if loaded is None else loaded
    from tunelab.models.peft_compat import load_peft_adapter

    return load_peft_adapter(base, final, trainable_dtype=trainable_dtype)


def load_base(name: str, *, precision: str = "trained") -> Trained:
    """A base model (Hub id, folder or .gguf) as `generate`, `chat` and `predict` use a run, so the
    model before fine-tuning can be asked the same questions as the model after. A tokenizer with a
    chat template is a chat model (task sft); one without continues plain text (pretrain)."""
    compute = "fp32" if precision == "trained" else precision  # nothing was trained: no precision of its own
    loaded = load_model(ModelConfig(name=name), "sft", dtype=COMPUTE_DTYPES[compute])
    template = getattr(loaded.tokenizer, "chat_template", None)
    task = "sft" if template else "pretrain"
    info = {"task": task, "method": "none", "base_model": name, "chat_template": "own" if template else None}
    loaded.model.eval()
    return Trained(
        loaded.model,
        loaded.tokenizer,
        task,
        "none",
        None,
        info,
        Path(loaded.source),
        None,
        Precision(compute, COMPUTE_DTYPES[compute]),
    )


def load_run_or_base(path: str, *, precision: str = "trained") -> Trained:
    """A run (or its final/, or an export) when `path` is one, else a base model by that name."""
    candidate = Path(path)
    if find_final(candidate) is not None or (candidate / "summary.json").is_file():
        return load_trained(candidate, precision=precision)
    return load_base(path, precision=precision)
