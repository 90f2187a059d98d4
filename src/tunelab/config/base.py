"""The base of every recipe section: unknown keys are errors, and defaults are validated too."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# The validation context of one field validated on its own (partial.py): the recipe's cross-field checks
# wait for the whole rebuilt recipe.
ONE_FIELD = "tunelab.one_field"
