"""The recipe reference (docs/recipe.md), written from the schema itself: every section's fields with
their type, default and description, and one table per registered method. Generated, so it cannot
drift from the code: `tunelab recipe-reference --out docs/recipe.md` rewrites it, and a test checks
the checked-in page is current.

The output is deterministic: fields in declaration order, methods in registration order, and defaults
rendered as YAML would spell them (no dates, no paths of this machine)."""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tunelab.config.data_section import ChatTemplate, ExistingFile
from tunelab.config.recipe import Recipe
from tunelab.methods.registry import MethodConfig, method_names, method_spec

REGENERATE = "tunelab recipe-reference --out docs/recipe.md"

INTRO = f"""\
# Recipe reference

Every field a recipe may set: its type, its default and what it does. This page is generated from the
recipe schema (`src/tunelab/config/`) and the registered methods (`src/tunelab/methods/`); do not edit
it by hand. After changing a field, run `{REGENERATE}`
(`tests/unit/test_recipe_reference.py` fails while the page is out of date).

How to read it: *required* fields have no default. A field whose type is *section* has its own table
below, under its path. `[]` stands for an item of a list (`data.train[]`: each dataset of a list) and
`<key>` for a key of a map. The `method:` section's fields depend on its `name`: one table per method.
Cross-field rules (which task allows which setting) are checked by `tunelab validate`, which names the
field at fault; they are not repeated here.
"""

# Annotated aliases of the schema, named by what the user writes rather than by their base type.
_ALIASES: dict[Any, str] = {
    ExistingFile: "file (must exist; or hf:org/name)",
    ChatTemplate: "template name or Jinja file",
}
_BOUNDS = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "≤"),
)


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class Table:
    title: str
    note: str
    rows: tuple[Row, ...]


def recipe_reference() -> str:
    """docs/recipe.md: the introduction, then a table per section, depth first in field order."""
    parts = [INTRO]
    for table in _tables(Recipe, "", "Top level", ""):
        parts.append(_markdown(table))
    return "\n".join(parts)


def _tables(model: type[BaseModel], path: str, title: str, note: str) -> Iterator[Table]:
    """`model`'s own table, then the tables of the sections its fields hold, in field order."""
    rows = tuple(_row(_join(path, name), field) for name, field in model.model_fields.items())
    yield Table(title, note or _doc(model), rows)
    for name, field in model.model_fields.items():
        yield from _nested_tables(_join(path, name), field)


def _nested_tables(path: str, field: FieldInfo) -> Iterator[Table]:
    if _is_method_section(field):
        for name in method_names():
            config = method_spec(name).config
            yield from _tables(config, path, f"`{path}` with `name: {name}`", _doc(config))
        return
    found = list(_models_in(field.annotation, path))
    several = len({model for _, model in found}) > 1
    for sub_path, model in found:
        title = f"`{sub_path}`: {model.__name__}" if several else f"`{sub_path}`"
        yield from _tables(model, sub_path, title, "")


def _models_in(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The sections an annotation can hold, each with the path its fields take: a list's items are
    `path[]`, a map's values `path.<key>`."""
    origin = get_origin(annotation)
    if _is_model(annotation):
        yield path, annotation
    elif origin is Annotated:
        yield from _models_in(get_args(annotation)[0], path)
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _models_in(arg, path)
    elif origin in (list, tuple, set, Sequence):
        for arg in get_args(annotation):
            yield from _models_in(arg, f"{path}[]")
    elif origin is dict:
        yield from _models_in(get_args(annotation)[1], f"{path}.<key>")


def _row(path: str, field: FieldInfo) -> Row:
    if _is_method_section(field):
        kind = "section (its fields depend on `name`)"
    else:
        kind = _alias_of(field.metadata) or _type_text(field.annotation)
    bounds = _bounds_text(field.metadata)
    return Row(
        path=f"`{path}`",
        type=f"{kind} ({bounds})" if bounds else kind,
        default=_default_text(field),
        description=" ".join((field.description or "").split()),
    )


def _type_text(annotation: Any) -> str:
    """A field's type as a recipe's author reads it: `auto`, `fp32` ... for a Literal, `int or null`."""
    if annotation is None or annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return "section"
    if annotation in _ALIASES:
        return _ALIASES[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return ", ".join(f"`{_value_text(value)}`" for value in args)
    if origin is Annotated:
        return _alias_of(annotation.__metadata__) or _type_text(args[0])
    if origin in (Union, types.UnionType):
        return _one_of(list(dict.fromkeys(_type_text(arg) for arg in args)))  # once each, in order
    if origin in (list, tuple, set, Sequence):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_text(args[0])} to {_type_text(args[1])}" if args else "map"
    return getattr(annotation, "__name__", str(annotation))


def _one_of(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _alias_of(metadata: Sequence[Any]) -> str | None:
    """A named alias whose validator a field carries (pydantic unpacks a top-level Annotated)."""
    for alias, text in _ALIASES.items():
        if any(item in metadata for item in alias.__metadata__):
            return text
    return None


def _bounds_text(metadata: Sequence[Any]) -> str:
    bounds = []
    for item in metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                bounds.append(f"{sign} {_value_text(getattr(item, attribute))}")
        if isinstance(item, annotated_types.MinLen):
            bounds.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
    return ", ".join(bounds)


def _default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{_value_text(value)}`"


def _value_text(value: Any) -> str:
    """A value as YAML spells it, on one line: null, true, [1, 4, 16], {}; a string that YAML would
    not read back as written (empty, a line break, edge spaces) in JSON's quotes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _value_text(value.value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, str):
        plain = value and value == value.strip() and "\n" not in value and "`" not in value
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_value_text(k)}: {_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set):
        return "[" + ", ".join(_value_text(item) for item in value) + "]"
    return repr(value)


def _markdown(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [_prose(table.note), ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for row in table.rows:
        cells = (row.path, row.type, row.default, _prose(row.description))
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """Descriptions write placeholders as <name>, which Markdown would take for HTML tags and hide:
    escaped outside `code` (the odd pieces between backticks)."""
    pieces = text.split("`")
    return "`".join(piece if i % 2 else piece.replace("<", "&lt;") for i, piece in enumerate(pieces))


def _doc(model: type[BaseModel]) -> str:
    """The section's own docstring as one paragraph (not one inherited from a base class)."""
    doc = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_method_section(field: FieldInfo) -> bool:
    """Recipe.method: validated by the schema its name picks, so each registered method gets a table."""
    annotation = field.annotation
    return isinstance(annotation, type) and issubclass(annotation, MethodConfig)
