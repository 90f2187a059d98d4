"""The /v1/fine_tuning/jobs routes: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request

from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.serving.config import ServeConfig
from tunelab.serving.errors import APIError, not_found
from tunelab.serving.files import list_object
from tunelab.serving.jobs import (
    JobRequest,
    check_request,
    checkpoint_object,
    event_object,
    fit_sequence_length,
    job_object,
    job_recipe,
    resolved_hyperparameters,
    write_recipe,
)
from tunelab.serving.store import Store, new_id, now
from tunelab.serving.supervisor import Supervisor

METADATA_FILTER = re.compile(r"^metadata\[(.+)\]$")


def router(config: ServeConfig, store: Store, supervisor: Supervisor) -> APIRouter:
    api = APIRouter(prefix="/fine_tuning/jobs")

    def job_or_404(job_id: str) -> dict[str, Any]:
        job = store.get_job(job_id)
        if job is None:
            raise not_found("fine-tuning job", job_id, "fine_tuning_job_id")
        return job

    @api.post("")
    def create_job(request: JobRequest) -> dict[str, Any]:
        return job_object(job_or_404(create(request, config, store)))

    @api.get("")
    def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        metadata = {
            match.group(1): value
            for key, value in request.query_params.items()
            if (match := METADATA_FILTER.match(key))
        }
        return list_object(store.list_jobs(after=after, limit=limit, metadata=metadata), limit, job_object)

    @api.get("/{fine_tuning_job_id}")
    def retrieve_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return job_object(job_or_404(fine_tuning_job_id))

    def verb_route(act: Callable[[str], None]) -> Callable[[str], dict[str, Any]]:
        def route(fine_tuning_job_id: str) -> dict[str, Any]:
            job_or_404(fine_tuning_job_id)
            act(fine_tuning_job_id)
            return job_object(job_or_404(fine_tuning_job_id))

        return route

    # cancel, pause, resume: the same shape, the supervisor's verb in the middle.
    for verb, act in (
        ("cancel", supervisor.cancel),
        ("pause", supervisor.pause),
        ("resume", supervisor.resume),
    ):
        api.add_api_route(
            f"/{{fine_tuning_job_id}}/{verb}", verb_route(act), methods=["POST"], name=f"{verb}_job"
        )

    @api.get("/{fine_tuning_job_id}/events")
    def list_events(fine_tuning_job_id: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        job_or_404(fine_tuning_job_id)
        rows = store.list_events(fine_tuning_job_id, after=after, limit=limit)
        return list_object(rows, limit, event_object)

    @api.get("/{fine_tuning_job_id}/checkpoints")
    def list_checkpoints(
        fine_tuning_job_id: str, after: str | None = None, limit: int = 10
    ) -> dict[str, Any]:
        job_or_404(fine_tuning_job_id)
        rows = store.list_checkpoints(fine_tuning_job_id, after=after, limit=limit)
        return list_object(rows, limit, checkpoint_object)

    return api


def create(request: JobRequest, config: ServeConfig, store: Store) -> str:
    """Check the request, write the job's recipe, record the job in validating_files; its id."""
    check_request(request, config, store)
    job_id = new_id("ftjob-")
    recipe = job_recipe(job_id, request, config, store)
    fitted = fit_sequence_length(recipe)
    seed = recipe["train"].setdefault("seed", random.randrange(2**31))
    path = write_recipe(config.root / "jobs" / job_id, recipe)
    try:
        load_recipe(path)  # the settings as a recipe: a bad value is the request's error (400)
    except TunelabError as exc:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise APIError(400, str(exc), param="method") from None
    state = {
        "created_at": now(),
        "seed": seed,
        "method_type": request.method_type(),
        "hyperparameters": resolved_hyperparameters(recipe, request),
        "recipe": str(path),
        "job_dir": str(path.parent),
    }
    store.add_job(job_id, request.model_dump(exclude_none=True), state, "validating_files")
    store.add_event(job_id, f"Created fine-tuning job: {job_id}")
    if fitted:
        store.add_event(job_id, fitted)
    return job_id
