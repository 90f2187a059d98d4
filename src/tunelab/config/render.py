"""Validation errors in the user's words: each under its YAML path, with the allowed keys, the closest
match for a typo, and the cross-field checks' problems listed one by one (also when a field is wrong)."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from tunelab.config.checks import RecipeProblems
from tunelab.config.partial import problems_where_parsed
from tunelab.methods.registry import method_names, method_spec


def format_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """Every problem in `exc` (from validating `raw`), one line each: the fields' own errors, then the
    cross-field problems. When a field failed, pydantic ran no cross-field check; they run here on the
    fields that parsed (partial.py)."""
    section = raw.get("method")
    method = section.get("name") if isinstance(section, dict) else None
    lines: list[str] = []
    checked = False
    for err in _without_unchosen_branches(exc.errors()):
        problems = (err.get("ctx") or {}).get("error")
        if isinstance(problems, RecipeProblems):
            lines.extend(str(p) for p in problems.problems)
            checked = True
        else:
            lines.append(_format_error(err, method))
    if not checked:
        lines.extend(str(p) for p in problems_where_parsed(raw, exc.errors()))
    return lines


TYPE_MISMATCH = {"string_type", "list_type", "dict_type", "model_type", "model_attributes_type"}


def _is_branch(part: Any) -> bool:
    """pydantic names the union member it tried inside the loc: 'function-after[...]', 'list[TrainSource]'."""
    if part == "[key]":  # a dict key that failed, not a union member
        return False
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _without_unchosen_branches(errors: list[Any]) -> list[Any]:
    """For a union field (data.train: a file or a list), report the branch the user meant: drop
    "not a list" when they wrote a path and the path is wrong, and vice versa."""
    by_field: dict[tuple[Any, ...], list[Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_branch(part)), None)
        by_field.setdefault(loc[:cut] if cut is not None else loc, []).append(err)
    kept: list[Any] = []
    for field, errs in by_field.items():
        branchy = [e for e in errs if any(_is_branch(p) for p in e["loc"])]
        if not branchy:
            kept.extend(errs)
            continue
        meant = [e for e in branchy if e["type"] not in TYPE_MISMATCH]
        if meant:
            kept.extend({**e, "loc": tuple(p for p in e["loc"] if not _is_branch(p))} for e in meant)
        else:  # a value of no accepted type at all: one message naming the accepted types
            kept.append(
                {"loc": field, "type": "union_type", "msg": "wrong type", "input": errs[0].get("input")}
            )
    return kept


def _yaml_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _allowed_keys(loc: tuple[Any, ...], method: str | None) -> list[str]:
    from tunelab.config.recipe import Recipe

    model: type[BaseModel] = Recipe
    for i, part in enumerate(loc[:-1]):
        if i == 0 and part == "method":
            if method not in method_names():
                return []
            model = method_spec(method).config
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [c for c in candidates if issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _format_error(err: Any, method: str | None) -> str:
    loc = tuple(err["loc"])
    path = _yaml_path(loc)
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if loc and loc[-1] == "[key]":
        return f"{_yaml_path(loc[:-1])}: the key {got!r} must be text: {err['msg'].lower()}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc, method)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: required, but missing"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{path}: must be {op} {bound}, got {got!r}"
    if kind == "string_pattern_mismatch":  # the pattern as written: lower-casing would change it
        return f"{path}: must match the pattern {ctx.get('pattern')}, got {got!r}"
    if kind == "literal_error":
        return f"{path}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "union_tag_invalid":
        return f"{path}: unknown method {ctx.get('tag')!r}; must be one of {', '.join(method_names())}"
    if kind == "union_type":
        return f"{path}: must be a file path or a list of datasets ({{path, weight, ...}}), got {got!r}"
    if kind == "union_tag_not_found":
        return f"{path}: needs a name ({', '.join(method_names())})"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        return f"{path}: {message}" if loc else message
    return f"{path}: {err['msg'].lower()}, got {got!r}"
