"""Issue 28's part for methods: each built-in family is one module (schema, builder, registration), the
registry at the config layer loads the families by module name on its first lookup (never on import), and
nothing below the families imports one."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO
from tunelab.methods.registry import BUILTIN_FAMILIES, method_names, method_spec

SRC = REPO / "src" / "tunelab"
BUILTINS = ("full", "freeze", "lora", "dora", "qlora", "ia3", "prefix", "prompt", "adapter")


def _fresh(code: str) -> Any:
    """Run `code` in a new interpreter (nothing imported yet); it prints one JSON value."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(proc.stdout)


def _imported(path: str) -> set[str]:
    """Every tunelab module a file imports, anywhere in it (lazy and TYPE_CHECKING imports included)."""
    names: set[str] = set()
    tree = ast.parse((SRC / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.startswith("tunelab")}


def test_each_built_in_method_has_its_schema_and_builder_in_one_family_module() -> None:
    assert method_names()[: len(BUILTINS)] == BUILTINS
    for name in BUILTINS:
        spec = method_spec(name)
        assert spec.config.__module__ == spec.build.__module__, name
        assert spec.build.__module__ in BUILTIN_FAMILIES, name


def test_the_families_load_on_the_first_lookup_and_reading_a_recipe_stays_light() -> None:
    seen = _fresh(
        "import json, sys\n"
        "import tunelab.config, tunelab.methods\n"
        "from tunelab.methods import registry\n"
        "families = lambda: [m for m in registry.BUILTIN_FAMILIES if m in sys.modules]\n"
        "before = families()\n"
        "registry.method_spec('lora')\n"
        "heavy = [m for m in ('torch', 'peft', 'transformers') if m in sys.modules]\n"
        "print(json.dumps({'before': before, 'after': families(), 'heavy': heavy}))\n"
    )
    assert seen == {"before": [], "after": list(BUILTIN_FAMILIES), "heavy": []}


@pytest.mark.parametrize("first", ["tunelab.methods.bottleneck", "tunelab.methods.lora"])
def test_importing_a_family_first_keeps_the_registration_order(first: str) -> None:
    # The order reaches users: "unknown method 'x'; must be one of full, freeze, lora, ...".
    names = _fresh(
        f"import json, {first}\nfrom tunelab.methods import method_names\nprint(json.dumps(method_names()))"
    )
    assert tuple(names) == BUILTINS


def test_a_plugin_cannot_take_a_built_in_name_even_before_the_first_lookup() -> None:
    refused = _fresh(
        "import json\n"
        "from tunelab.methods import MethodConfig, MethodSpec, register_method\n"
        "try:\n"
        "    register_method(MethodSpec('lora', MethodConfig, print))\n"
        "except ValueError as exc:\n"
        "    print(json.dumps(str(exc)))\n"
    )
    assert refused == "method 'lora' is already registered"


@pytest.mark.parametrize(
    "path",
    [
        "methods/registry.py",
        "methods/__init__.py",
        *[str(p.relative_to(SRC)) for p in sorted((SRC / "config").glob("*.py"))],
        *[str(p.relative_to(SRC)) for p in sorted((SRC / "models").glob("*.py"))],
        *[str(p.relative_to(SRC)) for p in sorted((SRC / "data").rglob("*.py"))],
    ],
)
def test_nothing_below_the_families_imports_one(path: str) -> None:
    # The registry reaches them by module name only (importlib), as Python loads entry points.
    families = set(BUILTIN_FAMILIES) | {"tunelab.methods.builtin"}
    assert sorted(n for n in _imported(path) if any(n == f or n.startswith(f + ".") for f in families)) == []
    if not path.startswith("methods/"):
        assert "tunelab.methods" not in _imported(path)  # the registry by its own name
