"""Every shipped recipe validates (those reading ../shared/data need it; qlora needs CUDA), and a
model.adapter names the runs of another shipped recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, SHARED_DATA
from tunelab.config import check_host, host_problems, load_recipe
from tunelab.errors import RecipeError

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
SHIPPED_NAMES = {yaml.safe_load(p.read_text(encoding="utf-8"))["name"] for p in RECIPES}


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
    if recipe.model.adapter is not None:
        # A run folder that exists once another shipped recipe has run (its name, then the time):
        # loading the model checks it (models/base_adapter.py), so here it must name that recipe's runs.
        first_stage = Path(recipe.model.adapter).name.rsplit("-TIME", 1)[0]
        assert first_stage in SHIPPED_NAMES, recipe.model.adapter
