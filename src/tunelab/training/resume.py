"""`train --resume`: which checkpoint a run continues from, and which recipe changes it allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from tunelab.config import Recipe, migrate, recipe_to_yaml
from tunelab.config.loading import flatten
from tunelab.errors import TunelabError
from tunelab.files import CHECKPOINTS_DIR, RECIPE_FILE, read_summary_json, write_text_atomic
from tunelab.training import checkpoint

# What may change when a run resumes: how often it logs, evaluates and saves, and how many checkpoints
# it keeps. Everything else (lr, batch size, data, schedule, method) would make the rest of the run a
# different run from the one its checkpoint, metrics and recipe.yaml describe.
SAFE_ON_RESUME = frozenset({"train.log_every", "train.eval_every", "train.save_every", "train.keep_last"})


def checkpoint_to_resume(run_dir: Path, recipe: Recipe, console: Console) -> Path:
    """The run's newest complete checkpoint; the recipe may differ from the run's only in
    SAFE_ON_RESUME, and such a change is recorded in recipe.yaml."""
    previous = read_summary_json(run_dir)  # the run's records are runs/'s; its status is all this needs
    if previous.get("status") == "completed":
        raise TunelabError(f"{run_dir} already completed", fix="start a new run without --resume")
    latest = checkpoint.list_checkpoints(run_dir / CHECKPOINTS_DIR)
    if not latest:
        raise TunelabError(
            f"{run_dir} has no complete checkpoint to resume from", fix="start a new run without --resume"
        )
    saved = yaml.safe_load((run_dir / RECIPE_FILE).read_text(encoding="utf-8"))
    migrate(saved)  # an older run's recipe.yaml, in today's layout: moved settings are not changes
    changed = recipe_changes(saved, recipe)
    refused = {path: change for path, change in changed.items() if path not in SAFE_ON_RESUME}
    if refused:
        raise TunelabError(
            f"--resume continues {run_dir} as it was set up; the recipe now differs in {', '.join(refused)}",
            problems=[f"{path}: {old!r} in the run, {new!r} now" for path, (old, new) in refused.items()],
            fix="resume with the run's own recipe (its recipe.yaml), or start a new run with the change; "
            f"these may change on resume: {', '.join(sorted(SAFE_ON_RESUME))}",
        )
    if changed:  # applied and recorded: recipe.yaml says what the rest of the run uses
        console.print(
            f"[yellow]note:[/] resuming with {', '.join(f'{p}={n!r}' for p, (_, n) in changed.items())}"
        )
        write_text_atomic(run_dir / RECIPE_FILE, recipe_to_yaml(recipe))
    return latest[-1]


def recipe_changes(saved: dict[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """Dotted recipe paths whose value differs between a run's saved recipe and `recipe`."""
    now = yaml.safe_load(recipe_to_yaml(recipe))
    before, after = flatten(saved or {}), flatten(now)
    return {
        p: (before.get(p), after.get(p))
        for p in sorted(before.keys() | after.keys())
        if before.get(p) != after.get(p)
    }
