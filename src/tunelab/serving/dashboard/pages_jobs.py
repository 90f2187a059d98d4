"""Jobs: the fine-tuning jobs with status and events; cancel / pause / resume; a form that uploads a
file and starts a job on it. The form goes through the same code as POST /v1/files and
POST /v1/fine_tuning/jobs (files.store_upload, jobs_api.create), so it refuses what the API refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile

from tunelab.serving import jobs_api
from tunelab.serving.dashboard.context import Dashboard
from tunelab.serving.dashboard.render import page
from tunelab.serving.errors import APIError
from tunelab.serving.files import TooLarge, store_upload
from tunelab.serving.jobs import ACTIVE, Hyperparameters, JobRequest, Method, MethodSettings, job_object

VERBS = ("cancel", "pause", "resume")
NEW_JOB_PATH = "/jobs/new"


def routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/jobs")
    def jobs(request: Request, _session: Any = dash.view) -> Response:
        return _jobs_page(request, dash)

    @router.get("/jobs/{job_id}")
    def job(request: Request, job_id: str, _session: Any = dash.view) -> Response:
        row = dash.store.get_job(job_id)
        if row is None:
            return page(request, "error.html", code=404, title="No such job", message=job_id)
        events = dash.store.list_events(job_id, after=None, limit=500)
        checkpoints = dash.store.list_checkpoints(job_id, after=None, limit=100)
        run_dir = row["state"].get("run_dir")
        return page(
            request,
            "job.html",
            here="jobs",
            job=job_object(row),
            events=events,
            checkpoints=checkpoints,
            run_id=Path(run_dir).name if run_dir else None,
            active=row["status"] in ACTIVE,
        )

    @router.post(NEW_JOB_PATH)
    async def new_job(request: Request, _session: Any = dash.post) -> Response:
        try:
            job_id = await _start_job(request, dash)
        except APIError as exc:  # the form's page again, saying why
            return _jobs_page(request, dash, exc.message, exc.status)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    for verb in VERBS:
        router.add_api_route(f"/jobs/{{job_id}}/{verb}", _verb_route(dash, verb), methods=["POST"])


def _verb_route(dash: Dashboard, verb: str) -> Any:
    act = getattr(dash.supervisor, verb)

    def route(request: Request, job_id: str, _session: Any = dash.post) -> Response:
        if dash.store.get_job(job_id) is None:
            return page(request, "error.html", code=404, title="No such job", message=job_id)
        try:
            act(job_id)
        except APIError as exc:  # e.g. resume of a job that is not paused: say so on the job's page
            return page(request, "error.html", code=exc.status, title=f"Cannot {verb}", message=exc.message)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    return route


def _jobs_page(request: Request, dash: Dashboard, error: str = "", code: int = 200) -> Response:
    rows = [job_object(job) for job in dash.store.list_jobs(after=None, limit=200, metadata={})]
    trainable = [name for name, model in dash.config.models.items() if model.kind == "generate"]
    return page(
        request,
        "jobs.html",
        code=code,
        here="jobs",
        jobs=rows,
        models=trainable,
        error=error,
        max_mb=dash.config.max_upload_mb,
    )


async def _start_job(request: Request, dash: Dashboard) -> str:
    """Store the uploaded file (as purpose fine-tune), then create the job on it; APIError if refused."""
    try:
        form = await request.form(max_files=1, max_fields=8)
    except TooLarge:
        raise APIError(
            413, f"File too large: this server accepts uploads up to {dash.config.max_upload_mb} MB"
        ) from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise APIError(400, "Choose a training file (JSONL) to upload")
    row = store_upload(upload, "fine-tune", dash.config.root / "files", dash.config.max_upload_bytes)
    dash.store.add_file(row)
    kind = str(form.get("method") or "supervised")
    epochs = str(form.get("n_epochs") or "").strip()
    hyper = Hyperparameters(n_epochs=int(epochs) if epochs.isdigit() else None)
    method = Method.model_validate({"type": kind, kind: MethodSettings(hyperparameters=hyper)})
    request_body = JobRequest(
        model=str(form.get("model") or ""),
        training_file=row["id"],
        suffix=str(form.get("suffix") or "").strip() or None,
        method=method,
    )
    return jobs_api.create(request_body, dash.config, dash.store)
