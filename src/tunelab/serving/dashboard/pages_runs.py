"""Runs (the registry, filtered and sorted), a run's page (its report, live loss curve, data report and
baselines), compare, and `tunelab tune` studies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from tunelab.errors import TunelabError
from tunelab.runs.registry import compare_runs, get_run, list_runs, main_metric, recipe_fields
from tunelab.runs.rundir import read_summary
from tunelab.serving.dashboard.context import Dashboard
from tunelab.serving.dashboard.render import page

SORTS = ("started", "name", "task", "method", "status", "steps", "wall_s")
LIVE_POLL_S = 0.5


def routes(router: APIRouter, dash: Dashboard) -> None:
    _list_routes(router, dash)
    _run_routes(router, dash)
    _study_routes(router, dash)


def _list_routes(router: APIRouter, dash: Dashboard) -> None:
    runs_dir = dash.config.runs_dir

    @router.get("/runs")
    def runs(
        request: Request,
        q: str = "",
        task: str = "",
        status: str = "",
        sort: str = "started",
        order: str = "desc",
        _session: Any = dash.view,
    ) -> Response:
        every = list_runs(runs_dir)
        rows = filtered(every, q, task, status)
        rows = sorted_runs(rows, sort if sort in SORTS else "started", descending=order != "asc")
        rows = [{**row, "main_metric": main_metric(row)} for row in rows]
        return page(
            request,
            "runs.html",
            here="runs",
            runs=rows,
            q=q,
            task=task,
            status=status,
            sort=sort,
            order=order,
            tasks=sorted({r["task"] or "" for r in every}),
            statuses=sorted({r["status"] or "" for r in every}),
            sorts=SORTS,
            metric_names=metric_columns(rows),
        )

    @router.get("/compare")
    def compare(
        request: Request, run: Annotated[list[str] | None, Query()] = None, _session: Any = dash.view
    ) -> Response:
        return _compare_page(request, runs_dir, run or [])


def _run_routes(router: APIRouter, dash: Dashboard) -> None:
    runs_dir = dash.config.runs_dir

    @router.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str, _session: Any = dash.view) -> Response:
        run = _run_or_404(request, runs_dir, run_id)
        if isinstance(run, Response):
            return run
        folder = Path(run["run_dir"] or "")
        return page(
            request,
            "run.html",
            here="runs",
            run=run,
            data=_read_json(folder / "data" / "report.json"),
            scores=score_table(run, folder),
            has_report=(folder / "report.html").is_file(),
        )

    @router.get("/runs/{run_id}/report.html")
    def report(request: Request, run_id: str, _session: Any = dash.view) -> Response:
        run = _run_or_404(request, runs_dir, run_id)
        if isinstance(run, Response):
            return run
        path = Path(run["run_dir"] or "") / "report.html"
        if not path.is_file():
            return page(
                request,
                "error.html",
                code=404,
                title="No report yet",
                message="The report is written when the run ends.",
            )
        return FileResponse(path, media_type="text/html")

    @router.get("/runs/{run_id}/metrics")
    async def metrics_stream(request: Request, run_id: str, _session: Any = dash.view) -> Response:
        run = _run_or_404(request, runs_dir, run_id)
        if isinstance(run, Response):
            return run
        lines = _follow(request, Path(run["run_dir"] or "") / "metrics.jsonl", runs_dir, run["run_id"])
        return StreamingResponse(lines, media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def _study_routes(router: APIRouter, dash: Dashboard) -> None:
    runs_dir = dash.config.runs_dir

    @router.get("/studies")
    def studies(request: Request, _session: Any = dash.view) -> Response:
        return page(request, "studies.html", here="studies", studies=study_summaries(runs_dir))

    @router.get("/studies/{name}")
    def study(request: Request, name: str, _session: Any = dash.view) -> Response:
        trials = study_trials(runs_dir, name)
        if trials is None:
            return page(request, "error.html", code=404, title="No such study", message=name)
        return page(
            request,
            "study.html",
            here="studies",
            name=name,
            trials=trials,
            params=sorted({p for t in trials for p in t["params"]}),
        )


def _compare_page(request: Request, runs_dir: Path, run: list[str]) -> Response:
    if len(run) < 2:
        return page(
            request,
            "error.html",
            code=400,
            title="Compare",
            message="Tick two or more runs on the Runs page to compare them.",
        )
    try:
        runs = [get_run(runs_dir, run_id) for run_id in run]  # prefixes resolved once, here
    except TunelabError as exc:
        return page(request, "error.html", code=404, title="Compare", message=str(exc))
    table = compare_runs(runs_dir, [r["run_id"] for r in runs])
    fields = [recipe_fields(r) for r in runs]
    keys = list(dict.fromkeys(key for f in fields for key in f))
    recipe = [(key, [f.get(key) for f in fields], key in table["recipe_differences"]) for key in keys]
    recipe.sort(key=lambda row: not row[2])  # the fields that differ first, then the shared ones
    return page(
        request, "compare.html", here="runs", table=table, recipe=recipe, names=[r["name"] for r in runs]
    )


def filtered(rows: list[dict[str, Any]], q: str, task: str, status: str) -> list[dict[str, Any]]:
    words = q.lower().split()
    return [
        r
        for r in rows
        if all(w in f"{r['name']} {r['run_id']} {r['base_model']}".lower() for w in words)
        and (not task or r["task"] == task)
        and (not status or r["status"] == status)
    ]


def sorted_runs(rows: list[dict[str, Any]], key: str, *, descending: bool) -> list[dict[str, Any]]:
    field = "started_at" if key == "started" else key
    present = [r for r in rows if r.get(field) is not None]
    missing = [r for r in rows if r.get(field) is None]  # unknown values last, whichever the order
    return sorted(present, key=lambda r: r[field], reverse=descending) + missing


def metric_columns(rows: list[dict[str, Any]], limit: int = 4) -> list[str]:
    """The most common numeric final metrics of the shown runs, for the table's last columns."""
    counts: dict[str, int] = {}
    for row in rows:
        for name, value in row["metrics"].items():
            if _is_number(value):
                counts[name] = counts.get(name, 0) + 1
    return sorted(counts, key=lambda name: (-counts[name], name))[:limit]


def score_table(run: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The run page's metrics table: the fine-tuned model's scores beside the same model before training
    and the base model's baselines (zero-/few-shot), from summary.json (the registry row lacks the
    baselines; it stands in when the folder is gone). A baseline's words (a note) go under the table."""
    try:
        summary = read_summary(folder)
        before, baselines, tuned = summary.before_training, summary.baselines, summary.metrics
    except (OSError, ValueError, TunelabError):
        before, baselines, tuned = run["before_training"], {}, run["metrics"]
    named = {"before training": before, **{name.replace("_", "-"): s for name, s in baselines.items()}}
    columns = {name: scores for name, scores in named.items() if any(map(_is_number, scores.values()))}
    columns["fine-tuned"] = tuned
    # A baseline's scores are a split's (val_, test_); its other numbers are bookkeeping (rows, shots).
    scored = (key for scores in columns.values() for key in scores if key.startswith(("val_", "test_")))
    rows = []
    for metric in dict.fromkeys([*tuned, *before, *scored]):
        values = [scores.get(metric) for scores in columns.values()]
        if any(map(_is_number, values)):
            rows.append((metric, values))
    notes = [
        f"{name}: {value}"
        for name, scores in named.items()
        for value in scores.values()
        if isinstance(value, str)
    ]
    return {"columns": list(columns), "rows": rows, "notes": notes}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _run_or_404(request: Request, runs_dir: Path, run_id: str) -> dict[str, Any] | Response:
    try:
        return get_run(runs_dir, run_id)
    except TunelabError as exc:
        return page(request, "error.html", code=404, title="No such run", message=str(exc))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


async def _follow(request: Request, path: Path, runs_dir: Path, run_id: str) -> AsyncIterator[str]:
    """Server-sent events: each metrics.jsonl line as it is written, then `end` once the run has ended.

    The file is only appended to (a resume truncates it first, a rare case this stream ignores), so a
    read offset is all the state; a partial last line waits for its newline.
    """
    offset = 0
    while not await request.is_disconnected():
        chunk = _read_from(path, offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                yield f"data: {line}\n\n"
        if not complete and get_run(runs_dir, run_id)["status"] != "running":
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(0 if complete else LIVE_POLL_S)


def _read_from(path: Path, offset: int) -> bytes:
    """What the file holds past `offset` (nothing while it does not exist): only the new bytes are read."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


def _storage_url(runs_dir: Path) -> str | None:
    path = runs_dir / "studies.sqlite"  # `tunelab tune`'s default storage (tuning/study.py)
    return f"sqlite:///{path}" if path.is_file() else None


def study_summaries(runs_dir: Path) -> list[dict[str, Any]]:
    import optuna

    url = _storage_url(runs_dir)
    if url is None:
        return []
    out = []
    for s in optuna.get_all_study_summaries(storage=url):
        best = s.best_trial
        out.append(
            {
                "name": s.study_name,
                "trials": s.n_trials,
                "direction": s.direction.name.lower(),
                "best": best.value if best else None,
                "best_params": best.params if best else {},
                "started": s.datetime_start,
            }
        )
    return out


def study_trials(runs_dir: Path, name: str) -> list[dict[str, Any]] | None:
    import optuna

    url = _storage_url(runs_dir)
    if url is None or name not in optuna.get_all_study_names(storage=url):
        return None
    study = optuna.load_study(study_name=name, storage=url)
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": t.params,
            "run": Path(t.user_attrs["run_dir"]).name if t.user_attrs.get("run_dir") else None,
            "note": t.user_attrs.get("reason"),
            "seconds": t.duration.total_seconds() if t.duration else None,
        }
        for t in study.trials
    ]
