"""API keys: `Authorization: Bearer tl-...`, stored as SHA-256 digests.

A key is 32 random bytes, so a fast hash is enough: there is nothing to brute-force that a slow
password hash (bcrypt, argon2) would protect. The key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from fastapi import Request

from tunelab.serving.errors import APIError
from tunelab.serving.store import Store, new_id, now

KEY_PREFIX = "tl-"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: Store, name: str) -> tuple[str, dict[str, Any]]:
    """A new key and its stored row; the key is not kept anywhere."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = {
        "id": new_id("key_"),
        "name": name,
        "sha256": digest(key),
        "hint": f"{key[:6]}...{key[-4:]}",
        "created_at": now(),
        "revoked_at": None,
    }
    store.add_key(row)
    return key, row


def require_key(store: Store) -> Any:
    """A FastAPI dependency: the request's bearer key must be a live key, else 401."""

    def check(request: Request) -> dict[str, Any]:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(
                401,
                "Missing API key: send `Authorization: Bearer <key>` (tunelab keys create)",
                code="missing_api_key",
            )
        row = store.key_by_hash(digest(key.strip()))
        # The lookup is by digest, so timing says nothing about the key; compare_digest is belt and braces.
        if row is None or not hmac.compare_digest(row["sha256"], digest(key.strip())):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key")
        request.state.key_id = row["id"]
        return row

    return check
