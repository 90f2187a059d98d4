"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`, with the status codes the
`openai` client maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403,
404 NotFoundError, 409 ConflictError, 413, 422, 429 RateLimitError, 5xx InternalServerError)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import TunelabError

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind}: {object_id!r}", param=param, code=f"{kind}_not_found")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> Any:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> Any:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Any:
        # FastAPI says 422; OpenAI (and so the client's BadRequestError) says 400 for a malformed body.
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return error_response(400, f"{param or 'request'}: {first.get('msg', 'invalid request')}", param)

    @app.exception_handler(TunelabError)
    async def tunelab_error(_request: Request, exc: TunelabError) -> Any:
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Any:
        return error_response(exc.status_code, str(exc.detail))


# Words in a fix that point at recipe settings: an API user has only the file and the request.
_RECIPE_FIELDS = re.compile(r"\b(data|train|model|method|eval|preference)\.[a-z_]+")
API_DATA_FIX = (
    "correct the rows named above in your file, upload it again (files.create) and create a new job with "
    "the new file id"
)


def api_error_text(exc: TunelabError) -> str:
    """A data error as an API user reads it: what is wrong and where, and a fix that needs no recipe."""
    fix = exc.fix if exc.fix and not _RECIPE_FIELDS.search(exc.fix) else API_DATA_FIX
    return str(TunelabError(exc.message, problems=exc.problems, fix=fix))
