"""Load on loopback: 32 chat requests from 8 concurrent clients, all answered correctly, in shared
forward passes. (Throughput with and without batching is measured in bench/serve_load.py.)"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.serving import client, live_server, serve_config

pytestmark = pytest.mark.slow
CLIENTS, REQUESTS = 8, 32


def _metric(base: str, name: str) -> float:
    line = next(li for li in httpx.get(f"{base}/metrics").text.splitlines() if li.startswith(name + " "))
    return float(line.split()[1])


def test_concurrent_clients_share_batches_and_get_their_own_answers(chat_llama: Path, tmp_path: Path) -> None:
    questions = [f"Question {i}: {'why ' * (i % 5)}" for i in range(REQUESTS)]  # different lengths: padding
    config = serve_config(tmp_path / "serve", chat_llama, max_batch=8, batch_window_ms=20)
    with live_server(config) as (url, key):
        clients = [client(url, key) for _ in range(CLIENTS)]

        def ask(i: int) -> str:
            reply = clients[i % CLIENTS].chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": questions[i]}],
                temperature=0,
                max_tokens=8,
            )
            return reply.choices[0].message.content

        alone = [ask(i) for i in range(REQUESTS)]  # one at a time: each its own batch of one
        base = url.removesuffix("/v1")
        batches_before = _metric(base, "tunelab_generate_batches_total")
        with ThreadPoolExecutor(CLIENTS) as pool:
            together = list(pool.map(ask, range(REQUESTS)))
        batches = _metric(base, "tunelab_generate_batches_total") - batches_before
    assert together == alone  # padding and neighbours change no answer
    assert batches < REQUESTS  # and the 32 requests shared forward passes
