"""Training methods as registered units (registry.py); the built-in ones are registered on import."""

from tunelab.methods import builtin as _builtin  # noqa: F401  (registers full, lora, ...)
from tunelab.methods.builtin import (
    AdapterMethod,
    DoraMethod,
    FreezeMethod,
    FullMethod,
    Ia3Method,
    LoraMethod,
    PrefixMethod,
    PromptMethod,
    QloraMethod,
)
from tunelab.methods.registry import (
    MethodConfig,
    MethodField,
    MethodSpec,
    Quantisation,
    method_names,
    method_spec,
    methods_where,
    register_method,
    unregister_method,
)

__all__ = [
    "AdapterMethod",
    "DoraMethod",
    "FreezeMethod",
    "FullMethod",
    "Ia3Method",
    "LoraMethod",
    "MethodConfig",
    "MethodField",
    "MethodSpec",
    "PrefixMethod",
    "PromptMethod",
    "QloraMethod",
    "Quantisation",
    "method_names",
    "method_spec",
    "methods_where",
    "register_method",
    "unregister_method",
]
