"""The base of every recipe section: unknown keys are errors, and defaults are validated too."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
