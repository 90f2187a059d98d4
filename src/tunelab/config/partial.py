"""The cross-field checks of a recipe that has wrong fields: run on the part of it that parsed.

pydantic runs the recipe's after-validator (checks.py's checks) only when every field parsed, so one
wrong value would hide every cross-field problem. Here the recipe is rebuilt field by field from the
YAML: a field without errors is validated on its own, with its own validators, as in the full parse; a
section with errors further down is rebuilt the same way; a field with errors of its own is left out.
Reading a left-out field raises NotParsed and the check that read it is skipped (that field's own
error is reported): a check runs exactly when every field it reads parsed.
"""

from __future__ import annotations

import inspect
import types
from typing import TYPE_CHECKING, Any, cast, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tunelab.config.base import ONE_FIELD
from tunelab.config.checks import CHECKS, Problem
from tunelab.methods.registry import MethodConfig, method_names, method_spec

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from tunelab.config.recipe import Recipe


class NotParsed(Exception):
    """A check read a field that did not parse."""


class Partial:
    """A section that did not parse as a whole: the fields that did, and NotParsed for the others. The
    section class's properties and methods run on it as on the section (`recipe.packing` reads
    train, task and method through it)."""

    def __init__(self, model: type[BaseModel], path: str, values: dict[str, Any], written: set[str]):
        self._model, self._path, self._values, self._written = model, path, values, written

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these: a Partial has none
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        if name in self._model.model_fields:
            raise NotParsed(f"{self._path}{name}")
        if name == "model_fields_set":  # the keys the YAML wrote, as pydantic's own
            return self._written
        attribute = inspect.getattr_static(self._model, name)  # AttributeError for a name it lacks
        if isinstance(attribute, property) and attribute.fget is not None:
            return attribute.fget(self)
        if isinstance(attribute, types.FunctionType):
            return types.MethodType(attribute, self)
        return getattr(self._model, name)


def problems_where_parsed(raw: dict[str, Any], errors: list[ErrorDetails]) -> list[Problem]:
    """The problems of every check in CHECKS whose fields all parsed, `errors` being the full parse's."""
    from tunelab.config.recipe import Recipe

    recipe = cast("Recipe", parsed_part(Recipe, raw, errors))
    problems = []
    for check in CHECKS:
        try:
            problems += check(recipe)
        except NotParsed:
            continue  # it reads a field that did not parse, whose own error is reported
    return problems


def parsed_part(
    model: type[BaseModel], raw: dict[str, Any], errors: list[ErrorDetails], path: str = ""
) -> Partial:
    """`raw` as `model`, field by field; `errors` are the full parse's, their locations relative to `raw`."""
    by_field: dict[Any, list[ErrorDetails]] = {}
    for error in errors:
        if error["loc"]:
            by_field.setdefault(error["loc"][0], []).append({**error, "loc": error["loc"][1:]})
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        field_errors = by_field.get(name)
        if not field_errors:
            if name not in raw:
                values[name] = field.get_default(call_default_factory=True)
            elif (parsed := _alone(model, name, raw[name])) is not _FAILED:
                values[name] = parsed
            continue
        nested = _section_model(field.annotation, raw.get(name))
        if nested is not None and all(error["loc"] for error in field_errors):  # wrong further down
            values[name] = parsed_part(nested, raw[name], field_errors, f"{path}{name}.")
    return Partial(model, path, values, set(raw) & set(model.model_fields))


_FAILED = object()


def _alone(model: type[BaseModel], name: str, value: Any) -> Any:
    """`value` as field `name` of `model` reads it (its own validators run), or _FAILED."""
    holder = model.model_construct()
    try:
        model.__pydantic_validator__.validate_assignment(holder, name, value, context={ONE_FIELD: True})
    except (ValidationError, AttributeError):
        # The section's own after-validator (search: a space or pairs) ran on a holder of defaults.
        return _FAILED
    return holder.__dict__[name]


def _section_model(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The section class a field holds (the method section: the schema its name picks), if any."""
    if not isinstance(value, dict):
        return None
    options = [
        option
        for option in get_args(annotation) or (annotation,)
        if get_origin(option) is None and isinstance(option, type) and issubclass(option, BaseModel)
    ]
    if len(options) != 1:
        return None
    if options[0] is MethodConfig:
        name = value.get("name")
        return method_spec(name).config if name in method_names() else None
    return options[0]
