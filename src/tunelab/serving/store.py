"""The server's records (files, jobs, events, checkpoints, API keys) in the run registry's SQLite file.

One database for runs and jobs: a job links to its run by the run folder, and both survive a restart
of the server together. Every call opens its own short connection (runs/registry.py explains why),
so the request threads, the job supervisor and the workers' registry writes never hold a lock long.
Rows are plain dicts; serving/wire.py turns them into OpenAI's objects.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from tunelab.runs.registry import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS serve_files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, filename TEXT NOT NULL,
    purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, path TEXT NOT NULL,
    status TEXT NOT NULL, status_details TEXT
);
CREATE TABLE IF NOT EXISTS serve_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    body_json TEXT NOT NULL, status TEXT NOT NULL, state_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serve_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL,
    data_json TEXT
);
CREATE INDEX IF NOT EXISTS serve_events_by_job ON serve_events (job_id, seq);
CREATE TABLE IF NOT EXISTS serve_checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    step INTEGER NOT NULL, created_at INTEGER NOT NULL, metrics_json TEXT NOT NULL, model TEXT NOT NULL,
    UNIQUE (job_id, step)
);
CREATE TABLE IF NOT EXISTS serve_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT UNIQUE NOT NULL, hint TEXT NOT NULL,
    created_at INTEGER NOT NULL, revoked_at INTEGER
);
"""


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def now() -> int:
    return int(time.time())


class Store:
    def __init__(self, database: Path):
        self.database = database
        database.parent.mkdir(parents=True, exist_ok=True)
        with connect(database) as conn:
            conn.executescript(_SCHEMA)

    # -- files ---------------------------------------------------------------------------------

    def add_file(self, row: dict[str, Any]) -> dict[str, Any]:
        self._insert("serve_files", row)
        return row

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM serve_files WHERE id = ?", (file_id,))

    def list_files(self, *, purpose: str | None, after: str | None, limit: int, order: str) -> list[dict]:
        where, params = ["1 = 1"], []
        if purpose:
            where.append("purpose = ?")
            params.append(purpose)
        return self._page("serve_files", where, params, after, limit, order)

    def delete_file(self, file_id: str) -> None:
        self._execute("DELETE FROM serve_files WHERE id = ?", (file_id,))

    # -- jobs ----------------------------------------------------------------------------------

    def add_job(self, job_id: str, body: dict[str, Any], state: dict[str, Any], status: str) -> None:
        row = {"id": job_id, "created_at": state["created_at"], "status": status}
        self._insert("serve_jobs", {**row, "body_json": json.dumps(body), "state_json": json.dumps(state)})

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM serve_jobs WHERE id = ?", (job_id,))
        return _job(row) if row else None

    def list_jobs(self, *, after: str | None, limit: int, metadata: dict[str, str]) -> list[dict[str, Any]]:
        where, params = ["1 = 1"], []
        for key, value in metadata.items():
            where.append("json_extract(body_json, ?) = ?")
            params += [f'$.metadata."{key}"', value]
        return [_job(row) for row in self._page("serve_jobs", where, params, after, limit, "desc")]

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in statuses)
        query = f"SELECT * FROM serve_jobs WHERE status IN ({marks}) ORDER BY seq"
        with connect(self.database) as conn:
            return [_job(dict(row)) for row in conn.execute(query, statuses)]

    def update_job(self, job_id: str, status: str | None = None, **state: Any) -> dict[str, Any]:
        """Merge `state` into the job's state (and set its status) in one transaction."""
        with connect(self.database) as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT * FROM serve_jobs WHERE id = ?", (job_id,)).fetchone()
            job = _job(dict(row))
            job["state"].update(state)
            job["status"] = status or job["status"]
            conn.execute(
                "UPDATE serve_jobs SET status = ?, state_json = ? WHERE id = ?",
                (job["status"], json.dumps(job["state"]), job_id),
            )
            conn.execute("COMMIT")
        return job

    # -- events and checkpoints ------------------------------------------------------------------

    def add_event(
        self, job_id: str, message: str, *, level: str = "info", data: Any = None, kind: str | None = None
    ) -> None:
        """An event; `metrics` when it carries data, unless `kind` says otherwise."""
        kind = kind or ("metrics" if data is not None else "message")
        self._insert(
            "serve_events",
            {
                "id": new_id("ft-event-"),
                "job_id": job_id,
                "created_at": now(),
                "level": level,
                "message": message,
                "type": kind,
                "data_json": None if data is None else json.dumps(data),
            },
        )

    def list_events(self, job_id: str, *, after: str | None, limit: int) -> list[dict[str, Any]]:
        return self._page("serve_events", ["job_id = ?"], [job_id], after, limit, "desc")

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any], model: str) -> bool:
        """False when the step was recorded already (a resumed segment saves it again)."""
        with connect(self.database) as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO serve_checkpoints (id, job_id, step, created_at, metrics_json, model) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (new_id("ftckpt_"), job_id, step, now(), json.dumps(metrics), model),
            )
            return cursor.rowcount == 1

    def list_checkpoints(self, job_id: str, *, after: str | None, limit: int) -> list[dict[str, Any]]:
        return self._page("serve_checkpoints", ["job_id = ?"], [job_id], after, limit, "desc")

    # -- API keys --------------------------------------------------------------------------------

    def add_key(self, row: dict[str, Any]) -> None:
        self._insert("serve_keys", row)

    def all_keys(self) -> list[dict[str, Any]]:
        with connect(self.database) as conn:
            return [dict(row) for row in conn.execute("SELECT * FROM serve_keys ORDER BY created_at")]

    def key_by_hash(self, digest: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM serve_keys WHERE sha256 = ? AND revoked_at IS NULL", (digest,))

    def revoke_key(self, key_id: str) -> bool:
        with connect(self.database) as conn:
            cursor = conn.execute(
                "UPDATE serve_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (now(), key_id)
            )
            return cursor.rowcount == 1

    # -- plumbing --------------------------------------------------------------------------------

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self._execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(row.values()))

    def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        with connect(self.database) as conn:
            conn.execute(query, params)

    def _one(self, query: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        with connect(self.database) as conn:
            row = conn.execute(query, params).fetchone()
        return dict(row) if row else None

    def _page(
        self, table: str, where: list[str], params: list[Any], after: str | None, limit: int, order: str
    ) -> list[dict[str, Any]]:
        """One page of a cursor-paginated list, `limit + 1` rows so the caller can tell `has_more`.
        `after` is an id: the rows that come after it in the list's order."""
        direction, beyond = ("DESC", "<") if order == "desc" else ("ASC", ">")
        if after is not None:
            where = [*where, f"seq {beyond} COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)"]
            params = [*params, after]
        query = f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY seq {direction} LIMIT ?"
        with connect(self.database) as conn:
            return [dict(row) for row in conn.execute(query, (*params, limit + 1))]


def _job(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "created_at": row["created_at"],
        "status": row["status"],
        "body": json.loads(row["body_json"]),
        "state": json.loads(row["state_json"]),
    }
