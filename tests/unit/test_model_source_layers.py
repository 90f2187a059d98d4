"""Issue 28's part for the model source, precision, augmentation and Hub specs: no stage reaches back
(imports at module level, inside functions and under TYPE_CHECKING all count), and loading, merging a
base adapter and restoring a run import each other one way only."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

SRC = REPO / "src" / "tunelab"


def imported(module: str) -> set[str]:
    """Every tunelab module `module` imports, anywhere in its file."""
    path = SRC.joinpath(*module.split(".")[1:]).with_suffix(".py")
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.startswith("tunelab")}


def reaching(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in imported(module) if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize(
    ("module", "above"),
    [
        ("tunelab.data.augment", ("tunelab.generation", "tunelab.models")),
        ("tunelab.config.data_section", ("tunelab.data",)),
        ("tunelab.config.hub_spec", ("tunelab.data",)),
        ("tunelab.models.load", ("tunelab.training",)),
        ("tunelab.models.restore", ("tunelab.training",)),
        ("tunelab.models.base_adapter", ("tunelab.training",)),
        ("tunelab.models.precision", ("tunelab.training",)),
        ("tunelab.models.source", ("tunelab.training", "tunelab.models.load", "tunelab.models.restore")),
        ("tunelab.models.saved", ("tunelab.training", "tunelab.models.load", "tunelab.models.restore")),
    ],
)
def test_no_stage_reaches_back(module: str, above: tuple[str, ...]) -> None:
    assert reaching(module, above) == []


def test_loading_merging_and_restoring_import_each_other_one_way() -> None:
    # restore -> load -> base_adapter -> (source, saved): a base adapter never loads through load.py
    assert reaching("tunelab.models.base_adapter", ("tunelab.models.load", "tunelab.models.restore")) == []
    assert reaching("tunelab.models.load", ("tunelab.models.restore",)) == []
    assert "tunelab.models.load" in imported("tunelab.models.restore")
