"""`tunelab serve`'s application: the OpenAI-compatible routes under /v1 (all behind an API key), and
the open /health and /metrics, and the web dashboard (serving/dashboard/: a login, then a session).

Built by `create_app(config)` so tests start the real app on 127.0.0.1 with the real uvicorn. The job
supervisor and the batching engine are background threads started and stopped with the app.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from tunelab.serving import dashboard, files, inference_api, jobs_api
from tunelab.serving.auth import require_key
from tunelab.serving.config import ServeConfig
from tunelab.serving.dashboard.pages_jobs import NEW_JOB_PATH
from tunelab.serving.engine import Engine
from tunelab.serving.errors import install_handlers
from tunelab.serving.files import TooLarge
from tunelab.serving.models import ModelPool
from tunelab.serving.runners import JobRunner, LocalRunner
from tunelab.serving.store import Store
from tunelab.serving.supervisor import Supervisor

log = logging.getLogger("tunelab.serve")


def create_app(config: ServeConfig, runner: JobRunner | None = None) -> FastAPI:
    store = Store(config.database)
    supervisor = Supervisor(config, store, runner or make_runner(config))
    pool = ModelPool(config, store)
    engine = Engine(pool, config.max_batch, config.batch_window_ms, config.max_pending)
    counts: Counter[tuple[str, int]] = Counter()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        supervisor.start()
        engine.start()
        yield
        engine.stop()
        supervisor.stop()

    app = FastAPI(title="tunelab serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store, app.state.supervisor, app.state.pool, app.state.engine = store, supervisor, pool, engine
    install_handlers(app)
    # Uploads: the API's and the dashboard's new-job form.
    app.add_middleware(
        _BodyLimit,
        paths=("/v1/files", NEW_JOB_PATH),
        max_bytes=config.max_upload_bytes + files.MULTIPART_OVERHEAD,
    )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key(store))])
    v1.include_router(files.router(store, config.root / "files", config.max_upload_bytes))
    v1.include_router(jobs_api.router(config, store, supervisor))
    v1.include_router(inference_api.router(pool, engine, config.log_prompts))
    app.include_router(v1)
    dashboard.mount(app, config, store, supervisor, pool, engine)  # the web pages: a session, not a key

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        counts[(getattr(route, "path", "unmatched"), response.status_code)] += 1
        took = (time.perf_counter() - started) * 1000
        # Prompts and uploads are users' data: only the request line is logged unless asked.
        log.info("%s %s %d %.1fms", request.method, request.url.path, response.status_code, took)
        return response

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return _prometheus(counts, store, engine, pool)

    return app


def make_runner(config: ServeConfig) -> JobRunner:
    if config.runner == "ray":
        from tunelab.serving.ray_runner import RayRunner

        return RayRunner(config.ray_address, config.ray_num_gpus)
    return LocalRunner()


def _prometheus(counts: Counter[tuple[str, int]], store: Store, engine: Engine, pool: ModelPool) -> str:
    """Prometheus' text format, written out: a dozen lines do not need prometheus_client's registry."""
    lines = ["# TYPE tunelab_http_requests_total counter"]
    lines += [
        f'tunelab_http_requests_total{{route="{route}",status="{status}"}} {n}'
        for (route, status), n in sorted(counts.items())
    ]
    lines.append("# TYPE tunelab_jobs gauge")
    for status in ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"):
        lines.append(f'tunelab_jobs{{status="{status}"}} {len(store.jobs_with_status(status))}')
    lines += [
        "# TYPE tunelab_generate_batches_total counter",
        f"tunelab_generate_batches_total {engine.batches}",
        "# TYPE tunelab_generate_rows_total counter",
        f"tunelab_generate_rows_total {engine.rows}",
    ]
    bases, adapters = pool.loaded()
    lines += [
        "# TYPE tunelab_loaded_bases gauge",
        f"tunelab_loaded_bases {bases}",
        "# TYPE tunelab_loaded_adapters gauge",
        f"tunelab_loaded_adapters {adapters}",
    ]
    return "\n".join(lines) + "\n"


class _BodyLimit:
    """ASGI middleware: a request body to one of `paths` longer than `max_bytes` stops being read. The
    route sees TooLarge from its form parser and answers 413; nothing was stored."""

    def __init__(self, app: Any, paths: tuple[str, ...], max_bytes: int):
        self.app, self.paths, self.max_bytes = app, paths, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge()
            return message

        await self.app(scope, limited, send)
