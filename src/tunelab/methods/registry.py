"""Methods as registered units: each holds its recipe schema, its builder and its traits, registered once
(as peft's `register_peft_method` does). Config, precision, model loading and plan ask the registry,
so adding a method is one `register_method` call, in any module (a test file, a plugin).

The built-in families live one module each above this one (`tunelab/methods/lora.py`: LoRA's schemas,
builders and `METHODS`). The registry loads them by module name on its first lookup, as Python loads
entry points: so config, which sits below the models, can ask for a method without importing one.

The recipe's `method:` section is validated by the registered schema its `name` picks
(`MethodField`), so a method registered after import still validates, with errors at `method.<key>`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

Quantisation = Literal["4bit", "8bit"]
# (model, method settings, task, modules new to the checkpoint, token ids new to the vocabulary) -> model
Builder = Callable[[Any, Any, str, list[str], Sequence[int]], Any]


class MethodConfig(BaseModel):
    """The base of every method's recipe section; a method adds its own fields and a `name` literal."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    name: str = Field(description="The method; it picks the schema of the rest of the section.")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[MethodConfig]
    build: Builder
    trains_base_weights: bool = False  # full, freeze: the base's own weights move (float32 masters)
    mergeable: bool = False  # the trained weights fold into the base (peft's merge_and_unload)
    virtual_tokens: bool = False  # prefix, prompt: tokens prepended to every input
    quantised_base: Quantisation | None = None  # qlora: the base is loaded in 4-bit
    trains_new_tokens: bool = False  # can train embedding rows of tokens added to the vocabulary

    @property
    def frozen_base(self) -> bool:
        """The base stays as loaded: an adapter method, which can also sit on an 8-bit base."""
        return not self.trains_base_weights


# The built-in method families, by module name; each module's `METHODS` (its MethodSpecs) are registered
# in this order, which is the order `method_names` lists them in messages.
BUILTIN_FAMILIES = (
    "tunelab.methods.full",
    "tunelab.methods.lora",
    "tunelab.methods.ia3",
    "tunelab.methods.prompt_learning",
    "tunelab.methods.bottleneck",
)

_REGISTRY: dict[str, MethodSpec] = {}
_builtins_loaded = False


def _registry() -> dict[str, MethodSpec]:
    """The registered methods, the built-in families' loaded first, once (a failed import is retried)."""
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_FAMILIES:
            for spec in importlib.import_module(module).METHODS:
                _add(spec)
        _builtins_loaded = True
    return _REGISTRY


def _add(spec: MethodSpec) -> None:
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make `spec` a method a recipe can name. A name is registered once, a built-in's included (the
    built-ins are loaded first, so they keep their place at the head of `method_names`)."""
    _registry()
    _add(spec)
    return spec


def unregister_method(name: str) -> None:
    """Forget a method (tests that register one clean up after themselves)."""
    _registry().pop(name, None)


def method_spec(name: str) -> MethodSpec:
    registry = _registry()
    if name not in registry:
        raise KeyError(f"unknown method {name!r}; one of {', '.join(method_names())}")
    return registry[name]


def method_names() -> tuple[str, ...]:
    return tuple(_registry())


def methods_where(trait: str) -> tuple[str, ...]:
    """Names of the methods with `trait` set, for messages: methods_where('trains_new_tokens')."""
    return tuple(name for name, spec in _registry().items() if getattr(spec, trait))


class MethodField:
    """The pydantic type of `Recipe.method`: the registered schema that `name` picks validates the
    section. Its errors keep their place (`method.r`), and unknown or missing names get their own."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_plain_validator_function(
            _validate_method,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.model_dump(mode="json")
            ),
        )


def _validate_method(value: Any) -> MethodConfig:
    if isinstance(value, MethodConfig):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("model_type", "expected a section ({name: lora, ...})")
    name = value.get("name")
    if name is None:
        raise PydanticCustomError("union_tag_not_found", "needs a name")
    registry = _registry()
    if not isinstance(name, str) or name not in registry:  # a list or a mapping is no name either
        raise PydanticCustomError("union_tag_invalid", "unknown method {tag}", {"tag": name})
    return registry[name].config.model_validate(value)
