"""tune: a hyper-parameter search over the recipe's `search:` section (Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import DebugOption, SetOption, app, console, friendly_errors, out


@app.command()
@friendly_errors
def tune(
    recipe: Annotated[Path, typer.Argument(help="A recipe with a `search:` section.")],
    set_: SetOption = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Where the study lives: sqlite:///F, postgresql://..., journal:FILE "
            "(default: sqlite next to the run registry).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the study of that name.")] = False,
    worker: Annotated[
        bool, typer.Option("--worker", help="Join (or start) a study that other processes share.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Search hyper-parameters: each trial an ordinary run; best.yaml and study.html at the end."""
    from tunelab.tuning.report import finish
    from tunelab.tuning.study import open_study, run_trials

    work = open_study(recipe, set_ or [], storage, resume=resume or worker)
    console.print(
        f"study {work.study.study_name}: {work.search.trials} trials, {work.search.sampler} sampler, "
        f"{work.search.pruner} pruner; folder {work.folder}"
    )
    try:
        run_trials(work, console)
    finally:  # also after Ctrl-C: the report shows the trials so far, and --resume continues
        summary = finish(work.study, work.raw, work.search, work.folder, work.test_file)
    best = summary["best"]
    states = ", ".join(f"{n} {state}" for state, n in summary["states"].items())
    out.print(f"trials: {states}")
    if best:
        out.print(f"best: trial {best['number']}, {work.search.metric} {best['value']:.4f}, {best['values']}")
        if best["test"]:
            out.print(
                "  test (once, after the search): "
                + ", ".join(f"{k} {v:.4f}" for k, v in best["test"].items())
            )
        out.print(f"best recipe: {best['best_yaml']}")
    out.print(f"report: {work.folder / 'study.html'}")
