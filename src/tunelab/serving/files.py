"""POST/GET/DELETE /v1/files: uploads stored under their id, size-limited, checked by the data stage.

The client's filename is only a label: the bytes land in `<root>/files/<id><suffix>`, the suffix
taken from a fixed list (it tells the data stage how to read the file), so no name can reach outside
that folder. An upload over the limit is refused (413) before or while its body arrives, and its
partial copy is removed: nothing of it stays on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from tunelab.errors import TunelabError
from tunelab.serving.errors import APIError, api_error_text, not_found
from tunelab.serving.jobs import ACTIVE
from tunelab.serving.store import Store, new_id, now

PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "vision", "user_data", "evals")
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
MULTIPART_OVERHEAD = 64 * 1024  # the form's other fields and boundaries, beyond the file itself


class TooLarge(Exception):
    pass


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "file",
        "id": row["id"],
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": row["status_details"],
        "expires_at": None,
    }


def list_object(rows: list[dict[str, Any]], limit: int, render: Any) -> dict[str, Any]:
    """OpenAI's cursor page: `has_more` is what stops the client's auto-pagination."""
    page = [render(row) for row in rows[:limit]]
    return {
        "object": "list",
        "data": page,
        "has_more": len(rows) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def router(store: Store, files_dir: Path, max_bytes: int) -> APIRouter:
    api = APIRouter()

    @api.post("/files")
    async def create_file(request: Request) -> dict[str, Any]:
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes + MULTIPART_OVERHEAD:
            raise _too_large(max_bytes)
        try:
            form = await request.form(max_files=1, max_fields=4)
        except TooLarge:
            raise _too_large(max_bytes) from None
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "file: a file part is required (multipart/form-data)", param="file")
        if purpose not in PURPOSES:
            raise APIError(400, f"purpose: expected one of {', '.join(PURPOSES)}", param="purpose")
        try:
            row = store_upload(upload, str(purpose), files_dir, max_bytes)
        finally:
            await form.close()
        return file_object(store.add_file(row))

    @api.get("/files")
    def list_files(
        after: str | None = None, limit: int = 10000, order: str = "desc", purpose: str | None = None
    ) -> dict[str, Any]:
        if order not in ("asc", "desc") or not 1 <= limit <= 10000:
            raise APIError(400, "order must be asc or desc, limit between 1 and 10000", param="order")
        rows = store.list_files(purpose=purpose, after=after, limit=limit, order=order)
        return list_object(rows, limit, file_object)

    @api.get("/files/{file_id}")
    def retrieve_file(file_id: str) -> dict[str, Any]:
        return file_object(_file(store, file_id))

    @api.get("/files/{file_id}/content")
    def file_content(file_id: str) -> Any:
        row = _file(store, file_id)
        return FileResponse(
            row["path"], media_type="application/octet-stream", filename=Path(row["path"]).name
        )

    @api.delete("/files/{file_id}")
    def delete_file(file_id: str) -> dict[str, Any]:
        row = _file(store, file_id)
        _refuse_while_in_use(store, file_id)
        store.delete_file(file_id)
        Path(row["path"]).unlink(missing_ok=True)
        return {"object": "file", "id": file_id, "deleted": True}

    return api


def _file(store: Store, file_id: str) -> dict[str, Any]:
    row = store.get_file(file_id)
    if row is None:
        raise not_found("file", file_id, "file_id")
    return row


def _refuse_while_in_use(store: Store, file_id: str) -> None:
    """A job that has not ended may still read the file (validation, a resume after a restart)."""
    users = [
        job["id"]
        for job in store.jobs_with_status(*ACTIVE)
        if file_id in (job["body"].get("training_file"), job["body"].get("validation_file"))
    ]
    if users:
        raise APIError(
            409,
            f"{file_id} is used by {', '.join(users)}, which has not ended; delete it after the job",
            param="file_id",
            code="file_in_use",
        )


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"File too large: this server accepts uploads up to {max_bytes:,} bytes",
        param="file",
        code="file_too_large",
    )


def store_upload(upload: UploadFile, purpose: str, files_dir: Path, max_bytes: int) -> dict[str, Any]:
    """Copy the upload to a hidden temp name, check its size and contents, then rename it into place."""
    file_id = new_id("file-")
    name = upload.filename or "upload.jsonl"
    suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in SUFFIXES else ".jsonl"
    files_dir.mkdir(parents=True, exist_ok=True)
    final, partial = files_dir / f"{file_id}{suffix}", files_dir / f".{file_id}.partial"
    try:
        with partial.open("wb") as out:
            shutil.copyfileobj(upload.file, out, length=1 << 20)
        size = partial.stat().st_size
        if size > max_bytes:
            raise _too_large(max_bytes)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    status, details = ("processed", None) if purpose != "fine-tune" else _check_contents(final, file_id, name)
    return {
        "id": file_id,
        "filename": name,
        "purpose": purpose,
        "bytes": size,
        "created_at": now(),
        "path": str(final),
        "status": status,
        "status_details": details,
    }


def _check_contents(path: Path, file_id: str, filename: str) -> tuple[str, str | None]:
    """The data stage's reading of the file (every bad row as `file:line: reason`); a bad file is
    kept and marked, and a job on it fails in validating_files with the same lines."""
    from tunelab.data.formats import load_split

    try:
        load_split(path)
    except TunelabError as exc:
        return "error", api_error_text(exc).replace(str(path), f"{file_id} ({filename})")
    return "processed", None
