"""Review (blind pairwise rating, feedback/store.py), its export, and the Playground (chat with one
served model, or two side by side, through the same code as /v1/chat/completions)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from tunelab.errors import TunelabError
from tunelab.feedback.store import CHOICES, FeedbackStore
from tunelab.serving.dashboard.render import page
from tunelab.serving.errors import APIError
from tunelab.serving.inference_api import ChatRequest, chat_completion

if TYPE_CHECKING:
    from tunelab.serving.dashboard import Dashboard

EXPORT_FORMATS = ("trl", "openai", "kto")


class PlaygroundAsk(BaseModel):
    model: str
    messages: list[dict[str, str]] = Field(min_length=1)
    max_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0, le=2)


def routes(router: APIRouter, dash: Dashboard) -> None:
    feedback = FeedbackStore(dash.config.database)

    @router.get("/review")
    def review(request: Request, error: str = "", _session: Any = dash.view) -> Response:
        session = request.state.session
        assignment = feedback.next_pair(session.rater)
        return page(request, "review.html", here="review", pair=assignment, progress=feedback.progress(),
                    agreement=feedback.agreement(), choices=CHOICES, formats=EXPORT_FORMATS, error=error)  # fmt: skip

    @router.post("/review")
    def rate(request: Request, pair_id: str = Form(...), left_id: str = Form(...), choice: str = Form(...),
             score: str = Form(""), comment: str = Form(""), _session: Any = dash.post) -> Response:  # fmt: skip
        try:
            feedback.rate(pair_id, request.state.session.rater, left_id=left_id, choice=choice,
                          score=int(score) if score.strip() else None, comment=comment.strip() or None)  # fmt: skip
        except (TunelabError, ValueError) as exc:
            return review(request, error=str(exc))
        return RedirectResponse("/review", status_code=303)

    @router.post("/review/export")
    def export(request: Request, format: str = Form("trl"), _session: Any = dash.post) -> Response:
        from tunelab.feedback.export import export_feedback

        if format not in EXPORT_FORMATS:
            return review(request, error=f"format: expected one of {', '.join(EXPORT_FORMATS)}")
        folder = Path(tempfile.mkdtemp(prefix="tunelab-export-"))
        path = folder / f"feedback-{format}.jsonl"
        try:
            export_feedback(dash.config.database, format, path)
        except TunelabError as exc:
            _remove(folder)
            return review(request, error=str(exc))
        return FileResponse(path, media_type="application/jsonl", filename=path.name,
                            background=BackgroundTask(_remove, folder))  # fmt: skip

    @router.get("/playground")
    def playground(request: Request, _session: Any = dash.view) -> Response:
        models = [
            m["id"] for m in dash.pool.listing() if m.get("tunelab", {}).get("kind", "generate") == "generate"
        ]
        return page(request, "playground.html", here="playground", models=models)

    @router.post("/playground/chat")
    async def ask(request: Request, body: PlaygroundAsk, _session: Any = dash.post) -> Response:
        chat = ChatRequest(model=body.model, messages=body.messages, max_tokens=body.max_tokens,
                           temperature=body.temperature)  # fmt: skip
        try:
            answer = await chat_completion(dash.pool, dash.engine, chat)
        except APIError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        return JSONResponse({"content": answer["choices"][0]["message"]["content"], "usage": answer["usage"]})


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink(missing_ok=True)
    folder.rmdir()
