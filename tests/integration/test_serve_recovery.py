"""Jobs survive trouble: kill -9 the server mid-job and restart it, and the job ends succeeded with the
weights of an uninterrupted run; cancel leaves no final/; pause checkpoints, resume continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.serving import (
    JOB_DEFAULTS,
    client,
    counting_chats,
    free_port,
    live_server,
    serve_config,
    upload,
    wait_for,
)
from tunelab.config import load_recipe
from tunelab.runner import train
from tunelab.serving.auth import create_key
from tunelab.serving.store import Store

pytestmark = pytest.mark.slow
# Long enough to be stopped in the middle: 200 steps of batch 1, a checkpoint every 5.
LONG_JOB = {**JOB_DEFAULTS, "train": {**JOB_DEFAULTS["train"], "batch_size": 1, "epochs": 5, "save_every": 5,
                                      "log_every": 5, "keep_last": 2}}  # fmt: skip


def _server_process(config_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tunelab", "serve", "--config", str(config_path), "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_until_up(api: openai.OpenAI, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the server exited"
        try:
            api.models.list()
            return
        except openai.APIConnectionError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)


@pytest.fixture
def served_process(tiny_llama: Path, tmp_path: Path) -> Iterator[Any]:
    """A `tunelab serve` process, its config file and a client; `restart()` starts it again."""
    config = serve_config(tmp_path / "serve", tiny_llama, job_defaults=LONG_JOB)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())), encoding="utf-8")
    key, _ = create_key(Store(config.database), "tests")
    port = free_port()
    api = client(f"http://127.0.0.1:{port}/v1", key)
    processes = [_server_process(path, port)]
    _wait_until_up(api, processes[0])

    def restart() -> None:
        processes.append(_server_process(path, port))
        _wait_until_up(api, processes[-1])

    try:
        yield config, api, processes, restart
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


def _uninterrupted(job_recipe: Path, tmp_path: Path) -> Path:
    recipe = load_recipe(job_recipe, [f"output.dir={tmp_path / 'uninterrupted'}"])
    return train(recipe).run_dir


def _worker_pids(job_id: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if job_id in (proc / "environ").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_kill_9_mid_job_then_restart_gives_an_uninterrupted_runs_weights(
    served_process: Any, tmp_path: Path
) -> None:
    config, api, processes, restart = served_process
    training = upload(api, tmp_path / "train.jsonl", counting_chats(40))
    job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id, seed=11)
    deadline = time.monotonic() + 120
    while not list(api.fine_tuning.jobs.checkpoints.list(job.id)):  # it has trained, and saved, a while
        assert time.monotonic() < deadline and api.fine_tuning.jobs.retrieve(job.id).status != "failed"
        time.sleep(0.05)
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait()
    time.sleep(0.5)
    assert _worker_pids(job.id) == []  # the worker died with its server: nobody trains unobserved
    restart()
    done = wait_for(api, job.id)
    assert done.status == "succeeded", done.error
    run_dir = Path(done.tunelab["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["steps"] == 200  # resumed, not started again
    messages = [e.message for e in api.fine_tuning.jobs.list_events(job.id, limit=1000)]
    assert "The server restarted; the job resumes from its newest checkpoint" in messages
    reference = _adapter(_uninterrupted(Path(config.root / "jobs" / job.id / "recipe.yaml"), tmp_path))
    resumed = _adapter(run_dir)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)


def test_a_killed_worker_is_restarted_from_its_checkpoint(served_process: Any, tmp_path: Path) -> None:
    config, api, _, _ = served_process
    training = upload(api, tmp_path / "train.jsonl", counting_chats(40))
    job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id, seed=13)
    while not list(api.fine_tuning.jobs.checkpoints.list(job.id)):
        time.sleep(0.05)
    (worker,) = _worker_pids(job.id)
    os.kill(worker, signal.SIGKILL)  # as the OOM killer would
    done = wait_for(api, job.id)
    assert done.status == "succeeded", done.error
    run_dir = Path(done.tunelab["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["segments"] == 2
    warnings = [e for e in api.fine_tuning.jobs.list_events(job.id, limit=1000) if e.level == "warn"]
    assert [e.message for e in warnings] == [
        "The worker was killed (signal 9); the job resumes from its newest checkpoint"
    ]
    reference = _adapter(_uninterrupted(config.root / "jobs" / job.id / "recipe.yaml", tmp_path))
    for name, tensor in reference.items():
        torch.testing.assert_close(_adapter(run_dir)[name], tensor, rtol=0, atol=1e-6)


def test_cancel_stops_the_worker_and_leaves_no_final(served_process: Any, tmp_path: Path) -> None:
    _, api, _, _ = served_process
    training = upload(api, tmp_path / "train.jsonl", counting_chats(40))
    job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id)
    wait_for(api, job.id, ("running",))
    while api.fine_tuning.jobs.retrieve(job.id).tunelab["run_dir"] is None:
        time.sleep(0.05)
    cancelled = api.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    run_dir = Path(cancelled.tunelab["run_dir"])
    assert not (run_dir / "final").exists() and _worker_pids(job.id) == []
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "cancelled"
    with pytest.raises(openai.ConflictError):
        api.fine_tuning.jobs.cancel(job.id)
    time.sleep(0.5)
    assert api.fine_tuning.jobs.retrieve(job.id).status == "cancelled"  # the supervisor leaves it so


def test_pause_checkpoints_and_resume_continues_to_the_same_weights(tiny_llama: Path, tmp_path: Path) -> None:
    config = serve_config(tmp_path / "serve", tiny_llama, job_defaults=LONG_JOB)
    with live_server(config) as (url, key):
        api = client(url, key)
        training = upload(api, tmp_path / "train.jsonl", counting_chats(40))
        job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id, seed=5)
        # Running, with an ETA, and a checkpoint saved.
        while api.fine_tuning.jobs.retrieve(job.id).estimated_finish is None or not list(
            api.fine_tuning.jobs.checkpoints.list(job.id)
        ):
            time.sleep(0.05)
        with pytest.raises(openai.ConflictError):  # its file is still needed (resume reads it again)
            api.files.delete(training.id)
        assert api.fine_tuning.jobs.pause(job.id).status == "paused"
        deadline = time.monotonic() + 60
        while _worker_pids(job.id):  # it saves its checkpoint, then exits
            assert time.monotonic() < deadline
            time.sleep(0.1)
        paused = api.fine_tuning.jobs.retrieve(job.id)
        run_dir = Path(paused.tunelab["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert paused.status == "paused" and summary["status"] == "interrupted" and 0 < summary["steps"] < 200
        assert summary["last_checkpoint"] == f"step-{summary['steps']:08d}"  # saved where it stopped
        resumed = api.fine_tuning.jobs.resume(job.id)
        assert resumed.status == "queued"
        done = wait_for(api, job.id)
        assert done.status == "succeeded", done.error
    reference = _adapter(_uninterrupted(config.root / "jobs" / job.id / "recipe.yaml", tmp_path))
    for name, tensor in reference.items():
        torch.testing.assert_close(_adapter(run_dir)[name], tensor, rtol=0, atol=1e-6)
