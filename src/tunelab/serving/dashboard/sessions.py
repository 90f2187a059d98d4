"""The dashboard's login: an API key once, then a session cookie; a CSRF token on every form.

Sessions are rows in the server's SQLite file (the cookie holds a random token; the table holds its
SHA-256), not signed cookies: a session dies with its key (`tunelab keys revoke`), can be ended by
logging out, and needs no server secret that would have to survive restarts.

CSRF: each session has its own random token, rendered into every form as `csrf` and sent by the
dashboard's fetch calls as the X-CSRF-Token header; every POST compares it in constant time. The
login form has no session yet, so it uses a double-submit cookie (`tl_login_csrf`) instead. The
session cookie is also SameSite=Strict, which stops cross-site posts in current browsers on its own;
the token is for the browsers and proxies that do not honour it.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request

from tunelab.runs.registry import connect
from tunelab.serving.auth import digest

SESSION_COOKIE = "tl_session"
LOGIN_CSRF_COOKIE = "tl_login_csrf"
CSRF_FIELD, CSRF_HEADER = "csrf", "x-csrf-token"
SESSION_S = 12 * 3600  # a working day; then log in again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dash_sessions (
    sha256 TEXT PRIMARY KEY, key_id TEXT NOT NULL, rater TEXT NOT NULL, csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Session:
    key_id: str
    rater: str  # who rates on the Review page: the name given at login, else the key's name
    csrf: str


class LoginRequired(Exception):
    """No live session: the handler answers with a redirect to /login?next=<this page>."""

    def __init__(self, next_path: str):
        self.next_path = next_path


class CsrfRejected(Exception):
    """A POST without this session's CSRF token: 403, nothing done."""


class Sessions:
    def __init__(self, database: Path):
        self.database = database
        with connect(database) as conn:
            conn.executescript(_SCHEMA)

    def create(self, key_row: dict[str, Any], rater: str) -> str:
        """A new session for a live key; the cookie's token (only its digest is stored)."""
        token, created = secrets.token_urlsafe(32), int(time.time())
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO dash_sessions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    digest(token),
                    key_row["id"],
                    rater or key_row["name"],
                    secrets.token_urlsafe(24),
                    created,
                    created + SESSION_S,
                ),
            )
        return token

    def lookup(self, token: str | None) -> Session | None:
        """The live session of a cookie: not expired, and its key not revoked."""
        if not token:
            return None
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT s.key_id, s.rater, s.csrf FROM dash_sessions s JOIN serve_keys k ON k.id = s.key_id "
                "WHERE s.sha256 = ? AND s.expires_at > ? AND k.revoked_at IS NULL",
                (digest(token), int(time.time())),
            ).fetchone()
        return Session(row["key_id"], row["rater"], row["csrf"]) if row else None

    def end(self, token: str | None) -> None:
        if token:
            with connect(self.database) as conn:
                conn.execute("DELETE FROM dash_sessions WHERE sha256 = ?", (digest(token),))


def session_of(sessions: Sessions) -> Any:
    """A FastAPI dependency: the request's session, else LoginRequired (a redirect to /login)."""

    def dependency(request: Request) -> Session:
        session = sessions.lookup(request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise LoginRequired(
                safe_next(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            )
        request.state.session = session
        return session

    return dependency


def csrf_checked(sessions: Sessions) -> Any:
    """A FastAPI dependency for every POST: a live session and its CSRF token (form field or header)."""
    needs_session = session_of(sessions)

    async def dependency(request: Request) -> Session:
        session = needs_session(request)
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            sent = str((await request.form()).get(CSRF_FIELD) or "")  # Starlette keeps the parsed form
        if not sent or not hmac.compare_digest(sent, session.csrf):
            raise CsrfRejected()
        return session

    return dependency


def safe_next(path: str) -> str:
    """Only a path on this server: `next=//evil.example` or a full URL would be an open redirect."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


def login_url(next_path: str) -> str:
    return f"/login?next={quote(safe_next(next_path), safe='/')}"
