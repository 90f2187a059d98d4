"""(IA)3 (through peft): its recipe section, builder and registration (`METHODS`, which the registry loads
by this module's name).

peft and the model-side helpers are imported when a model is built, so reading a recipe stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from tunelab.errors import RecipeError
from tunelab.methods.registry import MethodConfig, MethodSpec


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


def apply_ia3(
    model: Any, cfg: Ia3Method, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """(IA)3: learned vectors rescaling keys, values and the MLP; "auto" reads peft's per-architecture table."""
    from peft import IA3Config

    from tunelab.models.methods import attach_peft, peft_task_type

    targets, feedforward = _ia3_modules(model, cfg)
    config = IA3Config(
        target_modules=targets,
        feedforward_modules=feedforward,
        task_type=peft_task_type(task),
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return attach_peft(model, config, "method.target_modules")


def _ia3_modules(model: Any, cfg: Ia3Method) -> tuple[str | list[str], list[str]]:
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    model_type = getattr(model.config, "model_type", "?")
    known_targets = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    known_feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
    if cfg.target_modules == "auto" and known_targets is None:
        raise RecipeError(
            f"method.target_modules: peft has no (IA)3 defaults for model type {model_type!r}",
            fix="list the key, value and MLP output layers in method.target_modules and the MLP ones in "
            "method.feedforward_modules, or write all-linear",
        )
    # all-linear goes to peft as written: peft picks every linear layer but the output (or classifier) head.
    targets: str | list[str] = "all-linear"
    if cfg.target_modules != "all-linear":
        targets = list(known_targets or []) if cfg.target_modules == "auto" else list(cfg.target_modules)
    if cfg.feedforward_modules != "auto":
        feedforward = list(cfg.feedforward_modules)
    elif known_feedforward is not None:
        # peft requires feed-forward modules to be among the targets; with hand-picked targets keep those.
        feedforward = [name for name in known_feedforward if targets == "all-linear" or name in targets]
    else:
        raise RecipeError(
            f"method.feedforward_modules: peft has no (IA)3 defaults for model type {model_type!r}",
            fix="list which of method.target_modules are MLP layers (their input is rescaled), or []",
        )
    if targets != "all-linear" and not set(feedforward) <= set(targets):
        raise RecipeError(
            f"method.feedforward_modules: {sorted(set(feedforward) - set(targets))} are not in "
            f"method.target_modules ({targets})"
        )
    return targets, feedforward


METHODS = (MethodSpec("ia3", Ia3Method, apply_ia3, mergeable=True),)
