"""Every shipped recipe validates (those reading ../shared/data need it; qlora needs CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, SHARED_DATA
from tunelab.config import check_host, host_problems, load_recipe
from tunelab.errors import RecipeError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # recipes name data relative to the repository root
    if "../shared/data" in path.read_text(encoding="utf-8") and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} reads ../shared/data, absent in this clone")
    recipe = load_recipe(path)  # valid anywhere: what the machine lacks is the pre-flight's to say
    if "name: qlora" in path.read_text(encoding="utf-8") and not torch.cuda.is_available():
        assert "needs a CUDA GPU" in str(host_problems(recipe))
        with pytest.raises(RecipeError, match="1 problem on this machine"):
            check_host(recipe)
        return
    assert recipe.name
    for source in recipe.data.sources:  # the data a recipe names is really there
        assert Path(source.path).is_file(), source.path
