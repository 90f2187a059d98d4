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
