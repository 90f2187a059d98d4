"""Review (blind pairwise rating, feedback/store.py), its export, and the Playground (chat with one
served model, or two side by side, through the same code as /v1/chat/completions)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from tunelab.errors import TunelabError
from tunelab.feedback.store import CHOICES, FeedbackStore
from tunelab.serving.dashboard.context import Dashboard
from tunelab.serving.dashboard.render import page
from tunelab.serving.errors import APIError
from tunelab.serving.inference_api import ChatRequest, chat_completion

EXPORT_FORMATS = ("trl", "openai", "kto")


class PlaygroundAsk(BaseModel):
    model: str
    messages: list[dict[str, str]] = Field(min_length=1)
    max_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)


def routes(router: APIRouter, dash: Dashboard) -> None:
    _review_routes(router, dash)
    _playground_routes(router, dash)


def _review_routes(router: APIRouter, dash: Dashboard) -> None:
    feedback = FeedbackStore(dash.config.database)

    @router.get("/review")
    def review(request: Request, error: str = "", _session: Any = dash.view) -> Response:
        session = request.state.session
        assignment = feedback.next_pair(session.rater)
        return page(
            request,
            "review.html",
            here="review",
            pair=assignment,
            progress=feedback.progress(),
            agreement=feedback.agreement(),
            choices=CHOICES,
            formats=EXPORT_FORMATS,
            error=error,
        )

    @router.post("/review")
    def rate(
        request: Request,
        pair_id: str = Form(...),
        left_id: str = Form(...),
        choice: str = Form(...),
        score: str = Form(""),
        comment: str = Form(""),
        _session: Any = dash.post,
    ) -> Response:
        try:
            feedback.rate(
                pair_id,
                request.state.session.rater,
                left_id=left_id,
                choice=choice,
                score=int(score) if score.strip() else None,
                comment=comment.strip() or None,
            )
        except (TunelabError, ValueError) as exc:
            return review(request, error=str(exc))
        return RedirectResponse("/review", status_code=303)

    @router.post("/review/export")
    def export(request: Request, format: str = Form("trl"), _session: Any = dash.post) -> Response:
        if format not in EXPORT_FORMATS:
            return review(request, error=f"format: expected one of {', '.join(EXPORT_FORMATS)}")
        try:
            return _export_download(dash.config.database, format)
        except TunelabError as exc:
            return review(request, error=str(exc))


def _export_download(database: Path, format: str) -> FileResponse:
    """The ratings exported in `format` to a temporary file, sent as a download and removed once sent;
    when the export fails, the TunelabError, with the temporary folder already removed."""
    from tunelab.feedback.export import export_feedback

    folder = Path(tempfile.mkdtemp(prefix="tunelab-export-"))
    path = folder / f"feedback-{format}.jsonl"
    try:
        export_feedback(database, format, path)
    except TunelabError:
        _remove(folder)
        raise
    return FileResponse(
        path, media_type="application/jsonl", filename=path.name, background=BackgroundTask(_remove, folder)
    )


def _playground_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/playground")
    def playground(request: Request, _session: Any = dash.view) -> Response:
        models = [
            m["id"] for m in dash.pool.listing() if m.get("tunelab", {}).get("kind", "generate") == "generate"
        ]
        return page(request, "playground.html", here="playground", models=models)

    @router.post("/playground/chat")
    async def ask(request: Request, body: PlaygroundAsk, _session: Any = dash.post) -> Response:
        chat = ChatRequest(
            model=body.model, messages=body.messages, max_tokens=body.max_tokens, temperature=body.temperature
        )
        try:
            answer = await chat_completion(dash.pool, dash.engine, chat)
        except APIError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse({"content": answer["choices"][0]["message"]["content"], "usage": answer["usage"]})


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink(missing_ok=True)
    folder.rmdir()
