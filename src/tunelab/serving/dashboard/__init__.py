"""The web dashboard of `tunelab serve`: runs, a run's page, compare, jobs, studies, playground, review.

Behind the same API keys as /v1: a key logs in once and a session cookie carries it (sessions.py);
every page without a session redirects to /login, and every POST needs the session's CSRF token.
The pages are thin: each reads the library (the run registry, the job store, Optuna's storage, the
feedback store) and renders a template. Nothing here trains, scores or stores anything itself.
Each pages_*.py adds its routes to the one router built here, reading the server through a Dashboard
(context.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from tunelab.serving.auth import digest
from tunelab.serving.config import ServeConfig
from tunelab.serving.dashboard import pages_jobs, pages_review, pages_runs
from tunelab.serving.dashboard.context import Dashboard
from tunelab.serving.dashboard.render import page
from tunelab.serving.dashboard.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_S,
    CsrfRejected,
    LoginRequired,
    Sessions,
    csrf_checked,
    login_url,
    safe_next,
    session_of,
)
from tunelab.serving.engine import Engine
from tunelab.serving.files import TooLarge
from tunelab.serving.models import ModelPool
from tunelab.serving.store import Store
from tunelab.serving.supervisor import Supervisor

STATIC = Path(__file__).parent / "static"


def mount(
    app: FastAPI, config: ServeConfig, store: Store, supervisor: Supervisor, pool: ModelPool, engine: Engine
) -> None:
    sessions = Sessions(config.database)
    view, post = Depends(session_of(sessions)), Depends(csrf_checked(sessions))
    dash = Dashboard(config, store, supervisor, pool, engine, sessions, view, post)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    router = APIRouter(include_in_schema=False)
    _login_routes(router, dash)
    for pages in (pages_runs, pages_jobs, pages_review):
        pages.routes(router, dash)
    app.include_router(router)
    app.state.dashboard_routes = router.routes  # the route table, for the tests that walk every page

    @app.exception_handler(LoginRequired)
    async def to_login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    @app.exception_handler(TooLarge)  # the dashboard's upload form, cut off by the app's body limit
    async def too_large(request: Request, _exc: TooLarge) -> Response:
        return page(
            request,
            "error.html",
            code=413,
            title="File too large",
            message=f"This server accepts uploads up to {config.max_upload_mb} MB; nothing was stored.",
        )

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(request: Request, _exc: CsrfRejected) -> Response:
        return page(
            request,
            "error.html",
            code=403,
            title="Refused",
            message="This form was not sent with this session's CSRF token; nothing was done. "
            "Reload the page and try again.",
        )


def _login_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/")
    def home(_session: Any = dash.view) -> Response:
        return RedirectResponse("/runs", status_code=303)

    @router.get("/login")
    def login_form(request: Request, next: str = "/", error: str = "") -> Response:
        token = secrets.token_urlsafe(24)
        response = page(request, "login.html", next=safe_next(next), error=error, login_csrf=token)
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/login")
        return response

    @router.post("/login")
    def login(
        request: Request,
        key: str = Form(""),
        rater: str = Form(""),
        csrf: str = Form(""),
        next: str = Form("/"),
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(csrf, expected):
            raise CsrfRejected()
        row = dash.store.key_by_hash(digest(key.strip()))
        if row is None or row["revoked_at"] is not None:
            return login_form(request, next, error="That key is not a live key of this server.")
        token = dash.sessions.create(row, rater.strip()[:64])
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            SESSION_COOKIE, token, max_age=SESSION_S, httponly=True, samesite="strict", path="/"
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @router.post("/logout")
    def logout(request: Request, _session: Any = dash.post) -> Response:
        dash.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
