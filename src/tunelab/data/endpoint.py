"""POST JSON to an OpenAI-compatible API (the content screen's moderation scorer, augmentation's
paraphrases): the key from OPENAI_API_KEY, and a failure as a DataError naming the setting to check.
urllib rather than the openai package, which is a test dependency only."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from tunelab.errors import DataError


def post_json(
    base_url: str,
    path: str,
    body: dict[str, Any],
    *,
    setting: str,
    fix: str,
    timeout: float,
    what: str = "the endpoint",
) -> Any:
    """`body` to {base_url}/{path}; the decoded answer. `setting` (data.augment, ...), `what` and `fix`
    word the error when the endpoint cannot be reached or answers with an HTTP error."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    url = f"{base_url.rstrip('/')}/{path}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except OSError as exc:
        raise DataError(f"{setting}: {what} {base_url} failed: {exc}", fix=fix) from None
