"""Every shipped recipe validates (those reading ../shared/data need it; qlora needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHARED_DATA
from tunelab.config import load_recipe
from tunelab.errors import RecipeError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # recipes name data relative to the repository root
    if "../shared/data" in path.read_text(encoding="utf-8") and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads ../shared/data, absent in this clone")
    if "name: qlora" in path.read_text(encoding="utf-8") and not torch.cuda.is_available():
        with pytest.raises(RecipeError) as caught:
            load_recipe(path)
        assert "needs a CUDA GPU" in str(caught.value.problems)
        return
    recipe = load_recipe(path)
    assert recipe.name
    for source in recipe.data.sources:  # the data a recipe names is really there
        assert Path(source.path).is_file(), source.path
