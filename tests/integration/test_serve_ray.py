"""The Ray runner against a real local cluster (`ray start --head`): a job is submitted as a Ray Job,
trains, and its fine-tuned model answers. Ray is not one of tunelab's dependencies (the runner
speaks the Ray Jobs REST API); the cluster comes from `make ray` (.venv-ray) or a `ray` on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import client, counting_chats, free_port, live_server, serve_config, upload, wait_for

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _ray_cli() -> str | None:
    local = REPO / ".venv-ray" / "bin" / "ray"
    return os.environ.get("TUNELAB_RAY") or (str(local) if local.is_file() else shutil.which("ray"))


@pytest.fixture(scope="module")
def ray_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ray = _ray_cli()
    if ray is None:
        pytest.skip("no Ray cluster tool: `make ray` installs it into .venv-ray (or set TUNELAB_RAY)")
    temp = Path("/tmp") / f"tunelab-ray-{os.getpid()}"  # Ray's socket paths must stay short
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [ray, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(address + "/api/version", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray dashboard did not come up"
                time.sleep(0.5)
        yield address
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_job_runs_as_a_ray_job(ray_dashboard: str, tiny_llama: Path, tmp_path: Path) -> None:
    config = serve_config(tmp_path / "serve", tiny_llama, runner="ray", ray_address=ray_dashboard)
    with live_server(config) as (url, key):
        api = client(url, key)
        training = upload(api, tmp_path / "train.jsonl", counting_chats(12))
        job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id)
        done = wait_for(api, job.id)
        assert done.status == "succeeded", done.error
        reply = api.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": "Count on from 3"}],
            max_tokens=4,
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
        messages = [e.message for e in api.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any(m.startswith("Step ") for m in messages)  # the loop's lines, through the shared log
    with urllib.request.urlopen(f"{ray_dashboard}/api/jobs/") as response:
        ray_jobs = json.loads(response.read())
    ours = [j for j in ray_jobs if (j.get("metadata") or {}).get("tunelab_job") == job.id]
    assert len(ours) == 1 and ours[0]["status"] == "SUCCEEDED" and "tunelab train" in ours[0]["entrypoint"]
