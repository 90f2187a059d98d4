"""`tunelab runs` (the registry) and `tunelab report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import (
    DebugOption,
    app,
    friendly_errors,
    out,
)

runs_app = typer.Typer(no_args_is_help=True, help="The run registry: list, show and compare runs.")
app.add_typer(runs_app, name="runs")
RunsDir = Annotated[Path, typer.Option("--dir", help="The output.dir whose registry to read.")]


@runs_app.command("list")
@friendly_errors
def runs_list(
    runs_dir: RunsDir = Path("runs"),
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 20,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only runs with this tag, k=v (study=NAME); repeatable.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Runs, newest first, with status, cost and the main metric."""
    from tunelab.errors import TunelabError
    from tunelab.runs.registry import format_table, list_runs, main_metric

    wanted = dict(item.partition("=")[::2] for item in tag or [])
    if any(not key or not value for key, value in wanted.items()):
        raise TunelabError(f"--tag {tag}: expected KEY=VALUE")
    rows = []
    for run in list_runs(runs_dir, limit=None if wanted else limit):
        if any(run.get("tags", {}).get(key) != value for key, value in wanted.items()):
            continue
        main = main_metric(run)  # the task's headline score, as the dashboard's runs list shows it
        rows.append({**run, "metric": f"{main[0]} {main[1]:.4f}" if main else "-"})
        if len(rows) == limit:
            break
    columns = ("run_id", "status", "task", "method", "steps", "wall_s", "metric")
    for line in format_table(rows, columns) if rows else [f"no runs recorded in {runs_dir}"]:
        out.print(line)


@runs_app.command("show")
@friendly_errors
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix of one.")],
    runs_dir: RunsDir = Path("runs"),
    debug: DebugOption = False,
) -> None:
    """Everything the registry holds about one run."""
    import json

    from tunelab.runs.registry import get_run

    run = get_run(runs_dir, run_id)
    run.pop("recipe_yaml", None)
    out.print(json.dumps(run, indent=2))


@runs_app.command("compare")
@friendly_errors
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (or unique prefixes).")],
    runs_dir: RunsDir = Path("runs"),
    debug: DebugOption = False,
) -> None:
    """Metrics side by side, and the recipe fields that differ."""
    from tunelab.runs.registry import compare_runs, format_table

    result = compare_runs(runs_dir, run_ids)
    ids = result["runs"]
    metric_rows = [
        {"metric": name, **dict(zip(ids, values, strict=True))} for name, values in result["metrics"].items()
    ]
    diff_rows = [
        {"recipe field": name, **dict(zip(ids, values, strict=True))}
        for name, values in result["recipe_differences"].items()
    ]
    for line in format_table(metric_rows, ["metric", *ids]):
        out.print(line)
    out.print("")
    if diff_rows:
        for line in format_table(diff_rows, ["recipe field", *ids]):
            out.print(line)
    else:
        out.print("the recipes are the same")


@app.command()
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    debug: DebugOption = False,
) -> None:
    """Write RUN_DIR/report.html: curves, baselines, data report and cost, in one self-contained page."""
    from tunelab.runs.report import write_report

    out.print(f"report: {write_report(run_dir)}")
