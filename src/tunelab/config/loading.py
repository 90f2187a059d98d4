"""Reading a recipe: YAML, `--set` overrides, the migration of older recipes, validation with every
problem reported (render.py words them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.config.recipe import Recipe
from tunelab.config.render import format_errors
from tunelab.errors import RecipeError
from tunelab.tasks.registry import task_spec

# Preference settings moved from the method section to their own (`preference:`); recipe.yaml files
# saved before that spell them out under method, with their defaults for every other task.
_MOVED_TO_PREFERENCE = {"objective": "dpo", "beta": 0.1}


def migrate(raw: dict[str, Any]) -> None:
    """Rewrite an older recipe's layout in place: method.objective / method.beta -> preference.*, and
    a dataset's task_name -> name. Preference defaults saved by an older run of another task are
    dropped; anything else moves, so the checks still refuse a preference setting on an sft recipe."""
    data = raw.get("data")
    sources = data.get("train") if isinstance(data, dict) else None
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and "task_name" in source:
            source.setdefault("name", source.pop("task_name"))
    method = raw.get("method")
    if not isinstance(method, dict):
        return
    for key, default in _MOVED_TO_PREFERENCE.items():
        if key not in method:
            continue
        value = method.pop(key)
        if raw.get("task") != "preference" and value == default:
            continue
        section = raw.setdefault("preference", {})
        if isinstance(section, dict):
            section.setdefault(key, value)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    raw = _read_yaml(Path(path))
    for override in overrides or []:
        _apply_override(raw, override)
    migrate(raw)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = format_errors(exc, raw)
        noun = "problem" if len(problems) == 1 else "problems"
        raise RecipeError(
            f"{path}: {len(problems)} {noun}",
            problems=problems,
            fix=f"correct the recipe (or override with --set KEY=VALUE); `tunelab validate {path}` re-checks it",
        ) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """Every setting spelled out (a run's recipe.yaml), except what the recipe does not use and reading
    it back would refuse: the preference loss of a non-preference recipe, KTO's weights under another
    objective."""
    uses_preference = task_spec(recipe.task).preference_section
    skip: dict[str, Any] = {} if uses_preference else {"preference": True}
    if uses_preference and recipe.preference.objective != "kto":
        skip["preference"] = {"desirable_weight", "undesirable_weight"}
    if recipe.search is None:
        skip["search"] = True  # an ordinary run's recipe.yaml stays as it was before searches existed
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude=skip), sort_keys=False, allow_unicode=True)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted recipe paths: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path.resolve()}", fix="check the path to the YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{line}: not valid YAML: {reason}") from None
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: a recipe is a YAML mapping (name: ..., task: ...), got {type(raw).__name__}"
        )
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value`; the value is parsed as YAML so numbers, booleans and null keep their type."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise RecipeError(f"--set {key}: {where} is a value, not a section")
        node = child
    node[leaf] = _parse_scalar(text)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
