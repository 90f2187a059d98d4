"""Helpers for the `tunelab serve` tests: a live server on 127.0.0.1 and the official openai client.

Not a conftest: bench/serve_*.py use it too, without the tests' fixtures and environment.
The server runs for real: uvicorn on a free loopback port, in a thread of the test process (or as a
`tunelab serve` process where a test kills it), and is driven only through `openai.OpenAI`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import uvicorn

from tunelab.serving.app import create_app
from tunelab.serving.auth import create_key
from tunelab.serving.config import ServeConfig, load_serve_config
from tunelab.serving.store import Store

# Small, quick jobs: exact numbers need the precision pinned (not auto), and steps are few.
JOB_DEFAULTS = {
    "data": {"template": "chatml"},
    "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": "auto"},
    "train": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "log_every": 1, "save_every": 2, "keep_last": 10,
              "max_seq_len": 64, "precision": "fp32"},
    "eval": {"baselines": []},
}  # fmt: skip
FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_config(root: Path, model: Path, **settings: Any) -> ServeConfig:
    job_defaults = settings.pop("job_defaults", JOB_DEFAULTS)
    return load_serve_config(
        None,
        root=root,
        models={"tiny": {"path": str(model)}},
        job_defaults=job_defaults,
        poll_s=0.1,
        **settings,
    )


@contextlib.contextmanager
def live_server(config: ServeConfig) -> Iterator[tuple[str, str]]:
    """(base_url, api key) of a server running `config` until the block ends."""
    key, _ = create_key(Store(config.database), "tests")
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}/v1", key
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)


def wait_for(
    api: openai.OpenAI, job_id: str, statuses: tuple[str, ...] = FINISHED, timeout: float = 240
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = api.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout}s"
        time.sleep(0.1)


def counting_chats(n: int) -> list[dict[str, Any]]:
    """n distinct conversations (the data stage removes duplicates): count on from a number."""
    return [
        {"messages": [{"role": "user", "content": f"Count on from {i}"},
                      {"role": "assistant", "content": f"{i + 1} {i + 2} {i + 3}"}]}
        for i in range(n)
    ]  # fmt: skip


def upload(api: openai.OpenAI, path: Path, rows: list[Any]) -> Any:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with path.open("rb") as handle:
        return api.files.create(file=handle, purpose="fine-tune")
