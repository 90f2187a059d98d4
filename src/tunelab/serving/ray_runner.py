"""Jobs on a Ray cluster: each worker is a Ray Job (`ray job submit`), submitted through the Ray
Jobs REST API of the cluster's dashboard (http://HEAD:8265).

Ray does what a home-made scheduler would do badly: it places each job on a node with the CPUs and
GPUs asked for, queues what does not fit, and restarts nothing behind our back. The REST API is
plain HTTP, so tunelab needs no `ray` package of its own (the cluster has it).

The entrypoint is the same `tunelab train` command the local runner starts, so the server's root
(uploads, job folders, run folders) must be on a filesystem the cluster's nodes share, at the same
path. Pause is Ray's stop: SIGTERM, so the run checkpoints and exits, then SIGKILL after
RAY_JOB_STOP_WAIT_TIME_S (3 s by default: raise it on the cluster for big checkpoints).
"""

from __future__ import annotations

import json
import shlex
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

_EXIT = {"SUCCEEDED": 0, "STOPPED": -15}  # FAILED: Ray's recorded driver exit code


class RayRunner:
    survives_server = True  # a Ray job runs on when the server dies: a restarted server watches it again

    def __init__(self, address: str | None, num_gpus: float = 0.0, timeout_s: float = 30.0):
        if not address:
            raise TunelabError("runner ray needs ray_address: the dashboard, e.g. http://127.0.0.1:8265")
        self.address, self.num_gpus, self.timeout_s = address.rstrip("/"), num_gpus, timeout_s
        self._segments: dict[str, int] = {}

    def start(self, job_id: str, command: list[str], cwd: Path, log: Path) -> str:
        segment = self._segments.get(job_id, 0) + 1
        self._segments[job_id] = segment
        # Appending to the job's own log keeps events the same as under the local runner.
        entrypoint = f"cd {shlex.quote(str(cwd))} && {shlex.join(command)} >> {shlex.quote(str(log))} 2>&1"
        submission = f"{job_id}-{segment}-{_token()}"
        body: dict[str, Any] = {
            "entrypoint": entrypoint,
            "submission_id": submission,
            "metadata": {"tunelab_job": job_id},
            "runtime_env": {"env_vars": {"TUNELAB_JOB_ID": job_id, "PYTHONUNBUFFERED": "1"}},
        }
        if self.num_gpus:
            body["entrypoint_num_gpus"] = self.num_gpus
        self._call("POST", "/api/jobs/", body)
        return submission

    def exit_code(self, handle: str) -> int | None:
        details = self._call("GET", f"/api/jobs/{handle}")
        status = details.get("status")
        if status in _EXIT:
            return _EXIT[status]
        if status == "FAILED":
            return int(details.get("driver_exit_code") or 1)
        return None  # PENDING, RUNNING

    def pause(self, handle: str) -> None:
        self._call("POST", f"/api/jobs/{handle}/stop")

    def kill(self, handle: str) -> None:
        self._call("POST", f"/api/jobs/{handle}/stop")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.address + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            raise TunelabError(
                f"Ray Jobs {method} {path}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from None
        except urllib.error.URLError as exc:
            raise TunelabError(f"Ray dashboard at {self.address} unreachable: {exc.reason}") from None


def _token() -> str:
    import secrets

    return secrets.token_hex(3)
