"""The recipe: schema (sections.py, recipe.py; methods' own sections in tunelab.methods), checks across
fields (checks.py, all reported in one pass), checks of the machine (preflight.py), loading with
overrides and migration (loading.py) and error wording (render.py)."""

from tunelab.config.checks import CHECKS, Problem
from tunelab.config.data_section import source_name
from tunelab.config.loading import load_recipe, migrate, recipe_to_yaml
from tunelab.config.preflight import check_host, host_problems
from tunelab.config.recipe import Recipe
from tunelab.config.safety import ContentScreen
from tunelab.config.sections import (
    BASELINES,
    DataConfig,
    EarlyStopping,
    EvalConfig,
    ModelConfig,
    OutputConfig,
    PreferenceConfig,
    PrivacyConfig,
    Section,
    TrainConfig,
    TrainSource,
)
from tunelab.methods.registry import MethodConfig

__all__ = [
    "BASELINES",
    "CHECKS",
    "ContentScreen",
    "DataConfig",
    "EarlyStopping",
    "EvalConfig",
    "MethodConfig",
    "ModelConfig",
    "OutputConfig",
    "PreferenceConfig",
    "PrivacyConfig",
    "Problem",
    "Recipe",
    "Section",
    "TrainConfig",
    "TrainSource",
    "check_host",
    "host_problems",
    "load_recipe",
    "migrate",
    "recipe_to_yaml",
    "source_name",
]
