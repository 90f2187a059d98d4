"""The recipe: one YAML file that drives a whole run. Its schema is schema.py; every check across its
fields runs in one pass (checks.py) and all their problems are reported together, also beside the errors
of fields that did not parse (partial.py)."""

from __future__ import annotations

from pydantic import ValidationInfo, model_validator

from tunelab.config.base import ONE_FIELD
from tunelab.config.checks import RecipeProblems, problems_of
from tunelab.config.schema import RecipeSchema


class Recipe(RecipeSchema):
    @model_validator(mode="after")
    def _cross_field_checks(self, info: ValidationInfo) -> Recipe:
        if info.context and info.context.get(ONE_FIELD):  # partial.py validates one field of a stand-in
            return self
        problems = problems_of(self)
        if problems:
            raise RecipeProblems(problems)
        return self
