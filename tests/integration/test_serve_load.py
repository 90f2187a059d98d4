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


def test_concurrent_clients_share_batches_and_get_their_own_answers(tiny_llama: Path, tmp_path: Path) -> None:
    prompts = [f"Question {i}: {'why ' * (i % 5)}" for i in range(REQUESTS)]  # different lengths: padding
    config = serve_config(tmp_path / "serve", tiny_llama, max_batch=8, batch_window_ms=20)
    with live_server(config) as (url, key):
        api = client(url, key)

        def ask(prompt: str) -> str:
            reply = api.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=8)
            return reply.choices[0].text

        alone = [ask(p) for p in prompts]  # one at a time: each its own batch of one
        base = url.removesuffix("/v1")
        batches_before = _metric(base, "tunelab_generate_batches_total")
        clients = [client(url, key) for _ in range(CLIENTS)]

        def ask_with(i: int) -> str:
            reply = clients[i % CLIENTS].completions.create(
                model="tiny", prompt=prompts[i], temperature=0, max_tokens=8
            )
            return reply.choices[0].text

        with ThreadPoolExecutor(CLIENTS) as pool:
            together = list(pool.map(ask_with, range(REQUESTS)))
        batches = _metric(base, "tunelab_generate_batches_total") - batches_before
    assert together == alone  # padding and neighbours change no answer
    assert batches < REQUESTS  # and the 32 requests shared forward passes
