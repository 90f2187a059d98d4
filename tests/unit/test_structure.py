"""The shape the next engineer relies on: small modules and functions, and packages that talk through
each other's public names only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SRC = REPO / "src" / "tunelab"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in sorted(SRC.rglob("*.py"))]


def _package(path: Path) -> str:
    """tunelab/data/formats.py -> data; tunelab/runner.py -> runner."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def test_no_module_and_no_function_is_too_long_to_read() -> None:
    long_modules = [
        f"{path.relative_to(REPO)}: {n} lines"
        for path, _ in _modules()
        if (n := path.read_text(encoding="utf-8").count("\n")) > MAX_MODULE_LINES
    ]
    long_functions = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long_modules == [] and long_functions == []


def test_no_package_imports_another_packages_private_names() -> None:
    crossing = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab.")):
                continue
            theirs = node.module.split(".")[1]
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and theirs != _package(path):
                    crossing.append(f"{path.relative_to(REPO)}: from {node.module} import {alias.name}")
    assert crossing == []


# The layers, bottom to top (docs/DESIGN.md, "Layers"): a module imports modules of its own layer or
# lower ones only, whether at the top, inside a function or under TYPE_CHECKING. A name matches a module
# and everything under it; the longest match wins; "tunelab" alone is the root package.
LAYERS = (
    ("core", ("tunelab", "tunelab.errors", "tunelab.hashing", "tunelab.files")),
    ("recipe", ("tunelab.config", "tunelab.methods.registry", "tunelab.tasks.registry")),
    ("data", ("tunelab.data",)),
    ("models", ("tunelab.models", "tunelab.generation", "tunelab.decoding", "tunelab.methods")),
    ("training", ("tunelab.training",)),
    ("evaluation", ("tunelab.evaluation",)),
    ("runs", ("tunelab.runs",)),
    (
        "compose",
        (
            "tunelab.runner",
            "tunelab.fitting",
            "tunelab.export",
            "tunelab.inference",
            "tunelab.chat",
            "tunelab.plan",
            "tunelab.launch",
            "tunelab.paraphrase",
            "tunelab.tasks",
        ),
    ),
    ("apps", ("tunelab.tuning", "tunelab.serving", "tunelab.feedback")),
    ("cli", ("tunelab.cli", "tunelab.__main__")),
)


def _module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = ("tunelab", *path.relative_to(SRC).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _import_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every tunelab module, lazy and TYPE_CHECKING imports included."""
    modules = _module_names()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = set()
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for target in targets:
                found = resolve(target) if target.startswith("tunelab") else None
                if found is not None and found != module:
                    edges.add((module, found))
    return edges


def _layer(module: str) -> int | None:
    matches = [
        (len(name), i)
        for i, (_, names) in enumerate(LAYERS)
        for name in names
        if module == name or (name != "tunelab" and module.startswith(name + "."))
    ]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer_and_no_import_goes_up() -> None:
    assert [m for m in _module_names() if _layer(m) is None] == []
    upward = [
        f"{a} ({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]})"
        for a, b in sorted(_import_edges())
        if (la := _layer(a)) is not None and (lb := _layer(b)) is not None and lb > la
    ]
    assert upward == []


def test_no_two_modules_import_each_other_through_any_chain() -> None:
    edges = _import_edges()
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    circles = [component for component in _strongly_connected(graph) if len(component) > 1]
    assert circles == []


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the import graph is deep enough for Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_no_code_is_hand_packed_past_the_formatter() -> None:
    # `# fmt: skip` kept lines long to stay under the caps above; the shape of the code must do that.
    packed = [
        f"{path.relative_to(REPO)}:{number}"
        for path, _ in _modules()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "fmt: skip" in line
    ]
    assert packed == []
