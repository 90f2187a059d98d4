"""LoRA and its variants, DoRA and QLoRA (all through peft): their recipe sections, builders and
registration (`METHODS`, which the registry loads by this module's name).

peft and the model-side helpers are imported when a model is built, so reading a recipe stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from tunelab.errors import RecipeError
from tunelab.methods.registry import MethodConfig, MethodSpec


def _all_linear_is_auto(value: str | list[str]) -> str | list[str]:
    """peft's "all-linear" is what LoRA's auto means (`_lora` passes auto to peft as all-linear); read as
    auto, so a run's recipe.yaml and everything downstream see one spelling."""
    return "auto" if value == "all-linear" else value


class LoraMethod(MethodConfig):
    name: Literal["lora"] = Field(description="Low-rank adapters through peft; the base stays frozen.")
    r: int = Field(8, gt=0, description="Rank of the LoRA update matrices.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Annotated[
        Literal["auto", "all-linear"] | list[str], AfterValidator(_all_linear_is_auto)
    ] = Field(
        "auto",
        description="Module names to adapt; auto (or peft's spelling, all-linear): every linear layer "
        "except the output head.",
    )


class DoraMethod(LoraMethod):
    name: Literal["dora"] = Field(  # type: ignore[assignment]
        description="Weight-decomposed LoRA (DoRA): LoRA on the direction, a trained magnitude per column."
    )


class QloraMethod(LoraMethod):
    name: Literal["qlora"] = Field(  # type: ignore[assignment]
        description="LoRA over a 4-bit NF4 base with double quantisation (bitsandbytes; needs CUDA)."
    )


def apply_lora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """LoRA; also over an 8-bit base (`model.load_in_8bit`), which is prepared for k-bit training first."""
    return _lora(model, cfg, task, new_modules, use_dora=False, new_tokens=new_tokens)


def apply_dora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """DoRA: LoRA on the weight's direction plus a trained magnitude per output feature."""
    return _lora(model, cfg, task, new_modules, use_dora=True, new_tokens=new_tokens)


def apply_qlora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """LoRA over a base loaded in 4-bit NF4 (load_model(..., quantisation="4bit"))."""
    if not getattr(model, "is_loaded_in_4bit", False):
        raise RecipeError(
            "method qlora: the base model was not loaded in 4-bit",
            fix="load it with load_model(..., quantisation='4bit'), or use method lora for a full-precision base",
        )
    return _lora(model, cfg, task, new_modules, use_dora=False, new_tokens=new_tokens)


def _lora(
    model: Any,
    cfg: LoraMethod,
    task: str,
    new_modules: list[str],
    *,
    use_dora: bool,
    new_tokens: Sequence[int] = (),
) -> Any:
    from peft import LoraConfig

    from tunelab.models.methods import attach_peft, peft_task_type

    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # auto (a recipe's all-linear is read as auto) is peft's "all-linear": it skips the output head,
        # which LoRA should not adapt.
        target_modules="all-linear" if cfg.target_modules == "auto" else cfg.target_modules,
        use_dora=use_dora,
        task_type=peft_task_type(task),
        # Newly initialised modules (the classification head) have no pre-trained weights to adapt:
        # they are trained in full and saved with the adapter.
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
        trainable_token_indices=_token_rows(model, new_tokens) if new_tokens else None,
    )
    return attach_peft(model, config, "method.target_modules")


def _token_rows(model: Any, token_ids: Sequence[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices for new tokens: their input-embedding rows and, when the output head
    is not tied to the embeddings, their output rows too (else the model could never predict them)."""
    names = {id(module): name for name, module in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())]: list(token_ids)}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        rows[names[id(output)]] = list(token_ids)
    return rows


METHODS = (
    MethodSpec("lora", LoraMethod, apply_lora, mergeable=True, trains_new_tokens=True),
    MethodSpec("dora", DoraMethod, apply_dora, mergeable=True, trains_new_tokens=True),
    MethodSpec(
        "qlora", QloraMethod, apply_qlora, mergeable=True, quantised_base="4bit", trains_new_tokens=True
    ),
)
