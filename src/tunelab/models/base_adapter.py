"""`model.adapter`: start from another run's adapter, merged into the base weights as they load.

The SFT → DPO/KTO recipe (Zephyr's): the preference run's starting point, and with its own adapter
switched off its reference, is the SFT model, not the raw base. Merging first makes the SFT model a
plain model, so this run's method attaches to it as to any base, `disable_adapter` gives the SFT model
back, and nothing downstream needs to know two adapters exist.

The run's final/ keeps a copy of the merged run's final/ (`base_adapter/`), so restoring it
(`load_trained`: chat, eval, export, serve) rebuilds base + merged adapter + this run's adapter from the
run folder alone, even after the first run is moved or deleted. A chain (SFT → DPO → KTO) nests the
copies, and `merge_base_adapter` merges them innermost first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import ModelLoadError, TunelabError
from tunelab.models.saved import adapter_kind, load_saved_tokenizer, read_info, resolve_final
from tunelab.models.source import fit_embeddings_to, model_source
from tunelab.tasks.registry import task_spec

if TYPE_CHECKING:
    from tunelab.config import ModelConfig

BASE_ADAPTER = "base_adapter"  # in final/: the merged run's final/, copied


def resolve_adapter(cfg: ModelConfig, task: str | None = None) -> Path:
    """model.adapter's final/ folder, refused with the reason when it cannot be merged into model.name:
    not a finished run, full weights, an adapter that does not fold into weights, another base, or
    (given `task`) another model head."""
    from tunelab.methods.registry import method_spec, methods_where

    assert cfg.adapter is not None
    try:
        final = resolve_final(cfg.adapter)
    except TunelabError as exc:
        raise ModelLoadError(f"model.adapter: {exc.message}", fix=exc.fix) from None
    info = read_info(final)
    if adapter_kind(final) is None:
        raise ModelLoadError(
            f"model.adapter: {cfg.adapter} holds full weights ({info['method']} run), not an adapter",
            fix=f"point model.name at {final} instead: its weights are the whole model",
        )
    if not method_spec(info["method"]).mergeable:
        raise ModelLoadError(
            f"model.adapter: a {info['method']} adapter cannot be merged into the weights",
            fix=f"train the first stage with {', '.join(methods_where('mergeable'))}",
        )
    if not same_model(str(info["base_model"]), cfg.name):
        raise ModelLoadError(
            f"model.adapter: {cfg.adapter} was trained on {info['base_model']}, but model.name is {cfg.name}",
            fix=f"set model.name: {info['base_model']} (an adapter only fits the weights it was trained on)",
        )
    if task is not None and task_spec(info["task"]).head != task_spec(task).head:
        raise ModelLoadError(
            f"model.adapter: {cfg.adapter} is a {info['task']} run, whose model head task {task} does not use",
            fix="start from a run of a task with the same head (sft, pretrain and preference share one)",
        )
    return final


def same_model(recorded: str, name: str) -> bool:
    """Whether two model names load the same weights: equal, or one local folder (or .gguf) by two paths."""
    if recorded == name:
        return True
    try:
        (a, a_local), (b, b_local) = model_source(recorded), model_source(name)
    except ModelLoadError:
        return False  # a recorded folder that is gone cannot be shown to be the same one
    return a_local and b_local and Path(a).resolve() == Path(b).resolve()


def adapter_tokenizer(final: Path) -> Any:
    """The merged run's tokenizer: its chat template, and any marker tokens it added (rows it trained)."""
    return load_saved_tokenizer(final)


def merge_base_adapter(model: Any, final: Path) -> Any:
    """`model` with the adapter in `final` (and any it was itself trained over) merged into its weights.

    The embeddings first grow to the adapter's tokenizer, whose added tokens' trained rows the adapter
    holds. The merge runs in the weights' dtype, as loaded (peft's `merge_and_unload`).
    """
    from tunelab.models.peft_compat import load_peft_adapter

    inner = final / BASE_ADAPTER
    if inner.is_dir():
        model = merge_base_adapter(model, inner)
    fit_embeddings_to(adapter_tokenizer(final), model)
    return load_peft_adapter(model, final).merge_and_unload(safe_merge=True)
