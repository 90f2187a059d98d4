"""The built-in methods: each one's recipe schema and traits, registered with its builder.

The builders live in `tunelab.models.methods` (they need torch and peft); they are imported when a
model is built, so reading a recipe stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from tunelab.methods.registry import MethodConfig, MethodSpec, register_method


class FullMethod(MethodConfig):
    name: Literal["full"] = Field(description="Train every weight of the model.")


class FreezeMethod(MethodConfig):
    name: Literal["freeze"] = Field(description="Train only the top k blocks plus the head.")
    k: int = Field(ge=0, description="How many of the top transformer blocks to train (0: head only).")


def _all_linear_is_auto(value: str | list[str]) -> str | list[str]:
    """peft's "all-linear" is what LoRA's auto means (models/methods.py passes auto to peft as all-linear);
    read as auto, so a run's recipe.yaml and everything downstream see one spelling."""
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


class Ia3Method(MethodConfig):
    name: Literal["ia3"] = Field(description="(IA)3: learned vectors that rescale keys, values and the MLP.")
    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        "auto",
        description="Modules to rescale; auto: peft's table for the architecture (keys, values, MLP output); "
        "all-linear (as in peft): every linear layer except the output head.",
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto", description="Which of target_modules are MLP layers (their input is rescaled)."
    )


class PrefixMethod(MethodConfig):
    name: Literal["prefix"] = Field(description="Prefix tuning: trained key/value prefixes in every layer.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained prefix.")
    projection: bool = Field(
        False, description="Reparameterise the prefix through an MLP (more stable, more to train)."
    )


class PromptMethod(MethodConfig):
    name: Literal["prompt"] = Field(description="Prompt tuning: trained soft-prompt embeddings.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained soft prompt.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's embeddings (else random)."
    )


class AdapterMethod(MethodConfig):
    name: Literal["adapter"] = Field(
        description="Bottleneck adapters (Houlsby) after each block's attention and MLP; the base stays frozen."
    )
    reduction_factor: int = Field(16, gt=0, description="hidden size / adapter bottleneck size.")
    non_linearity: Literal["relu", "gelu", "silu"] = Field("relu", description="The bottleneck's activation.")


def _builder(name: str) -> Any:
    """models.methods.<name>, imported on first use."""

    def build(model: Any, cfg: Any, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()) -> Any:
        from tunelab.models import methods

        builder = getattr(methods, name)
        return (
            builder(model, cfg, task, new_modules, new_tokens)
            if new_tokens
            else builder(model, cfg, task, new_modules)
        )

    return build


for _spec in (
    MethodSpec("full", FullMethod, _builder("apply_full"), trains_base_weights=True, trains_new_tokens=True),
    MethodSpec("freeze", FreezeMethod, _builder("apply_freeze"), trains_base_weights=True),
    MethodSpec("lora", LoraMethod, _builder("apply_lora"), mergeable=True, trains_new_tokens=True),
    MethodSpec("dora", DoraMethod, _builder("apply_dora"), mergeable=True, trains_new_tokens=True),
    MethodSpec(
        "qlora",
        QloraMethod,
        _builder("apply_qlora"),
        mergeable=True,
        quantised_base="4bit",
        trains_new_tokens=True,
    ),
    MethodSpec("ia3", Ia3Method, _builder("apply_ia3"), mergeable=True),
    MethodSpec("prefix", PrefixMethod, _builder("apply_prefix"), virtual_tokens=True),
    MethodSpec("prompt", PromptMethod, _builder("apply_prompt"), virtual_tokens=True),
    MethodSpec("adapter", AdapterMethod, _builder("apply_adapter")),
):
    register_method(_spec)
