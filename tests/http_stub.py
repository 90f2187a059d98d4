"""A JSON HTTP endpoint on 127.0.0.1 for tests of tunelab's HTTP clients (moderation, paraphrase):
`respond(path, body) -> payload` answers each POST; every request body is kept in `seen`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

Respond = Callable[[str, dict[str, Any]], dict[str, Any]]


@contextmanager
def json_endpoint(respond: Respond) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yields (base URL ending in /v1, the request bodies seen, each with its path and auth header)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({**body, "_path": self.path, "_auth": self.headers.get("Authorization")})
            payload = json.dumps(respond(self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()
