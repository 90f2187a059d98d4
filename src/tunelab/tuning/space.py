"""The search space: what a trial's recipe gets (Optuna suggests, tunelab applies by recipe path), and
the check that every path exists and every value fits, against the recipe schema itself.

Optuna's parameter names are the recipe paths, so its reports and importances speak the recipe's
language. Tied parameters are not suggested: they follow the value they are tied to.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import ValidationError

from tunelab.config.render import format_errors
from tunelab.config.search import Range, SearchConfig, Tied

PAIRED = "paired"  # the Optuna parameter that picks one of search.paired's value sets (its index)


def suggest(trial: Any, search: SearchConfig) -> dict[str, Any]:
    """This trial's values by recipe path: suggested ones, the paired set, then the tied ones."""
    values: dict[str, Any] = {}
    for path, spec in search.space.items():
        if isinstance(spec, Range):
            values[path] = _suggest_range(trial, path, spec)
        elif isinstance(spec, list):
            values[path] = trial.suggest_categorical(path, spec)
    if search.paired:
        values.update(search.paired[trial.suggest_categorical(PAIRED, list(range(len(search.paired))))])
    return {**values, **tied_values(search, values)}


def _suggest_range(trial: Any, path: str, spec: Range) -> Any:
    if spec.integer:
        return trial.suggest_int(path, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(path, float(spec.low), float(spec.high), step=spec.step, log=spec.log)


def tied_values(search: SearchConfig, values: dict[str, Any]) -> dict[str, Any]:
    """The tied parameters whose leader is among `values`, computed from it."""
    tied = {}
    for path, spec in search.space.items():
        if isinstance(spec, Tied) and spec.same_as in values:
            value = values[spec.same_as] * spec.times
            tied[path] = (
                int(value) if isinstance(values[spec.same_as], int) and value == int(value) else value
            )
    return tied


def grid(search: SearchConfig) -> dict[str, list[Any]]:
    """Optuna's GridSampler space: every list as is, every stepped range spelled out."""
    space: dict[str, list[Any]] = {}
    for path, spec in search.space.items():
        if isinstance(spec, list):
            space[path] = spec
        elif isinstance(spec, Range) and spec.step is not None:
            count = round((spec.high - spec.low) / spec.step) + 1
            space[path] = [spec.low + i * spec.step for i in range(count)]
    if search.paired:
        space[PAIRED] = list(range(len(search.paired)))
    return space


def apply(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw recipe with each dotted path set (sections created as needed)."""
    out = copy.deepcopy(raw)
    for path, value in values.items():
        *sections, key = path.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return out


def check_space(raw: dict[str, Any], search: SearchConfig) -> list[str]:
    """Every problem of the space at once: unknown or tied-to-nothing paths, a grid without values,
    and values the recipe refuses (each range's ends, each choice, each paired set), by its path."""
    from tunelab.config import Recipe

    problems = _shape_problems(search)
    base = {k: v for k, v in raw.items() if k != "search"}
    for label, values in _probes(search):
        try:
            Recipe.model_validate(apply(base, values))
        except ValidationError as exc:
            problems += [f"search.{label}: {line}" for line in format_errors(exc, apply(base, values))]
        except ValueError as exc:  # the cross-field checks' RecipeProblems
            problems += [f"search.{label}: {line}" for line in str(exc).splitlines() if line.strip()]
    return list(dict.fromkeys(problems))


def _shape_problems(search: SearchConfig) -> list[str]:
    problems = []
    for path, spec in search.space.items():
        if isinstance(spec, Tied) and not isinstance(search.space.get(spec.same_as), Range | list):
            problems.append(f"search.space.{path}: same_as {spec.same_as!r} is not a searched parameter")
        if isinstance(spec, list) and not spec:
            problems.append(f"search.space.{path}: an empty list of choices")
        if search.sampler == "grid" and isinstance(spec, Range) and spec.step is None:
            problems.append(f"search.space.{path}: a grid needs a list of values or a range with a step")
    return problems


def _probes(search: SearchConfig) -> list[tuple[str, dict[str, Any]]]:
    """Values to validate the recipe with: each parameter's extremes or choices on their own, the
    tied ones following, each paired set and each enqueued trial."""
    probes = []
    for path, spec in search.space.items():
        options: list[Any] = []
        if isinstance(spec, Range):
            options = [spec.low, spec.high]
        elif isinstance(spec, list):
            options = spec
        for value in options:
            values = {path: value}
            probes.append((f"space.{path}", {**values, **tied_values(search, values)}))
    probes += [(f"paired[{i}]", dict(item)) for i, item in enumerate(search.paired)]
    probes += [(f"enqueue[{i}]", dict(item)) for i, item in enumerate(search.enqueue)]
    return probes


def space_size(search: SearchConfig) -> int | None:
    """How many trials a grid has (None for a continuous space)."""
    lists = grid(search)
    if len(lists) < len([s for s in search.space.values() if not isinstance(s, Tied)]) + (
        1 if search.paired else 0
    ):
        return None
    return math.prod(len(values) for values in lists.values())
