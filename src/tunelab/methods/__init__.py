"""Training methods as registered units. The registry (registry.py) is re-exported here; the built-in
families, one module each (full.py, lora.py, ia3.py, prompt_learning.py, bottleneck.py), are loaded by
the registry on its first lookup, never by importing this package, which stays free of torch and peft."""

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
    "MethodConfig",
    "MethodField",
    "MethodSpec",
    "Quantisation",
    "method_names",
    "method_spec",
    "methods_where",
    "register_method",
    "unregister_method",
]
