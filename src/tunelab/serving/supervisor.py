"""The job supervisor: one background thread that moves every job through its states.

validating_files -> queued -> running -> succeeded | failed | cancelled, with paused beside running.
Each tick it validates new jobs' files with the data stage, starts queued jobs while a device is free,
and watches running workers: their log lines and metrics become events, their checkpoints become
checkpoint objects, and their exit decides the job's end. All of it is kept in the store, so a
restarted server picks every job up where it was: a job found `running` resumes from its newest
checkpoint (runs/resume: the same weights as an uninterrupted run).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.serving import progress
from tunelab.serving.config import ServeConfig
from tunelab.serving.errors import APIError, api_error_text
from tunelab.serving.jobs import FINISHED, fine_tuned_name
from tunelab.serving.runners import JobRunner, train_command
from tunelab.serving.store import Store, now

log = logging.getLogger("tunelab.serve")


class Supervisor:
    def __init__(self, config: ServeConfig, store: Store, runner: JobRunner):
        self.config, self.store, self.runner = config, store, runner
        self.lock = threading.RLock()  # the thread's ticks and the API's cancel/pause/resume
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="tunelab-jobs", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 30.0) -> None:
        """Server shutdown: running workers checkpoint and stop; the next start resumes them."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for job in self.store.jobs_with_status("running"):
            self.runner.pause(job["state"]["handle"])
        deadline = time.monotonic() + grace_s
        for job in self.store.jobs_with_status("running"):
            while self.runner.exit_code(job["state"]["handle"]) is None and time.monotonic() < deadline:
                time.sleep(0.1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick must not end supervision of every job
                log.exception("job supervisor tick failed")
            self._stop.wait(self.config.poll_s)

    def tick(self) -> None:
        with self.lock:
            for job in self.store.jobs_with_status("validating_files"):
                self._validate(job)
            for job in self.store.jobs_with_status("running", "paused"):
                if job["state"].get("handle") is not None:
                    self._watch(job)
            busy = len(self.store.jobs_with_status("running"))
            for job in self.store.jobs_with_status("queued"):
                if busy >= self.config.concurrent_jobs:
                    break
                if self._start(job):
                    busy += 1

    def _recover(self) -> None:
        """Jobs a dead server left running: their workers died with it; they continue from the
        newest checkpoint (or start again without one)."""
        for job in self.store.jobs_with_status("running"):
            handle = job["state"].get("handle")
            alive = handle is not None and self.runner.exit_code(handle) is None
            if alive and self.runner.survives_server:
                continue  # still training on the cluster: watched again from the next tick
            if alive:
                self.runner.kill(handle)  # a worker that outlived its server: nobody watches it
            self.store.update_job(job["id"], "queued", handle=None, resume=True)
            self.store.add_event(
                job["id"], "The server restarted; the job resumes from its newest checkpoint"
            )

    # -- the steps of a job ----------------------------------------------------------------------

    def _validate(self, job: dict[str, Any]) -> None:
        from tunelab.config import load_recipe
        from tunelab.data.pipeline import load_records
        from tunelab.paraphrase import paraphraser_for

        self.store.add_event(job["id"], "Validating training file: " + job["body"]["training_file"])
        try:
            recipe = load_recipe(job["state"]["recipe"])
            load_records(recipe, paraphraser=paraphraser_for(recipe))
        except TunelabError as exc:
            self._fail(job, self._file_error(job, exc))
            return
        self.store.update_job(job["id"], "queued")
        self.store.add_event(job["id"], "Files validated, moving job to queued state")

    def _file_error(self, job: dict[str, Any], exc: TunelabError) -> dict[str, Any]:
        """The data stage's `file:line: reason`, with the server's paths shown as the file ids, and a fix an
        API user can carry out: the data stage's own fix names recipe fields (data.on_error), which a job
        request cannot set."""
        message, param = api_error_text(exc), "training_file"
        for name in ("training_file", "validation_file"):
            file_id = job["body"].get(name)
            row = self.store.get_file(file_id) if file_id else None
            if row is not None and row["path"] in message:
                message = message.replace(row["path"], f"{file_id} ({row['filename']})")
                param = name
        return {"code": f"invalid_{param}", "message": message, "param": param}

    def _start(self, job: dict[str, Any]) -> bool:
        state = job["state"]
        if state.get("handle") is not None and self.runner.exit_code(state["handle"]) is None:
            return False  # still writing its pause checkpoint
        run_dir = progress.run_dir_of(self.config.runs_dir, job["id"])
        resume = run_dir if state.get("resume") and progress.has_checkpoint(run_dir) else None
        job_dir = Path(state["job_dir"])
        handle = self.runner.start(
            job["id"], train_command(Path(state["recipe"]), resume), job_dir, job_dir / "worker.log"
        )
        self.store.update_job(
            job["id"],
            "running",
            handle=handle,
            resume=False,
            pausing=False,
            segment_started=time.time(),
            segment_start_step=state.get("step", 0),
        )
        where = f"resumes from {resume.name}" if resume else "started"
        self.store.add_event(job["id"], f"Fine-tuning job {where}")
        return True

    def _watch(self, job: dict[str, Any]) -> None:
        job = progress.ingest(self.store, job, self.config.runs_dir)
        code = self.runner.exit_code(job["state"]["handle"])
        if code is None:
            return
        job = progress.ingest(self.store, job, self.config.runs_dir)  # the last lines it wrote
        state = self.store.update_job(job["id"], handle=None)["state"]
        if job["status"] == "paused":
            self.store.update_job(job["id"], resume=True)
            self.store.add_event(job["id"], f"Fine-tuning job paused at step {state.get('step', 0)}")
        elif code == 0 and state.get("run_dir") and (Path(state["run_dir"]) / "final").is_dir():
            self._succeed(job)
        elif code < 0 and state.get("restarts", 0) < self.config.worker_restarts:
            # Killed from outside (the OOM killer, a lost node), not by an error of the run: go on
            # from the newest checkpoint, as after a server restart.
            self.store.update_job(job["id"], "queued", resume=True, restarts=state.get("restarts", 0) + 1)
            self.store.add_event(
                job["id"],
                f"The worker was killed (signal {-code}); the job resumes from its newest checkpoint",
                level="warn",
            )
        else:
            self._fail(
                job,
                {"code": "training_failed", "param": None, "message": progress.failure_reason(state, code)},
            )

    def _succeed(self, job: dict[str, Any]) -> None:
        state = job["state"]
        run_dir = Path(state["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        results = progress.write_results_file(self.store, self.config.root / "files", job["id"], run_dir)
        self.store.update_job(
            job["id"],
            "succeeded",
            fine_tuned_model=fine_tuned_name(job),
            finished_at=now(),
            trained_tokens=summary.get("tokens"),
            result_files=[results],
            report=summary.get("report"),
        )
        self.store.add_event(job["id"], "The job has successfully completed")

    def _fail(self, job: dict[str, Any], error: dict[str, Any]) -> None:
        self.store.update_job(job["id"], "failed", error=error, finished_at=now(), handle=None)
        self.store.add_event(job["id"], f"The job failed: {error['message']}", level="error")

    # -- the API's verbs -------------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        with self.lock:
            job = self._current(job_id)
            handle = job["state"].get("handle")
            if handle is not None:
                self.runner.kill(handle)
            self.store.update_job(job_id, "cancelled", handle=None, finished_at=now())
            self.store.add_event(job_id, "The job was cancelled")
            run_dir = job["state"].get("run_dir")
            if run_dir:
                progress.mark_cancelled(Path(run_dir), self.config.runs_dir)

    def pause(self, job_id: str) -> None:
        with self.lock:
            job = self._current(job_id)
            if job["status"] == "paused":
                return
            if job["state"].get("handle") is not None:
                self.runner.pause(job["state"]["handle"])  # the worker checkpoints, then exits
                self.store.add_event(job_id, "Pausing: the worker saves a checkpoint and stops")
            self.store.update_job(job_id, "paused", resume=True)

    def resume(self, job_id: str) -> None:
        with self.lock:
            job = self._current(job_id)
            if job["status"] != "paused":
                raise APIError(409, f"Job {job_id} is {job['status']}, not paused", code="job_not_paused")
            self.store.update_job(job_id, "queued", resume=True)
            self.store.add_event(job_id, "Resume requested; the job is queued")

    def _current(self, job_id: str) -> dict[str, Any]:
        """The job, after taking in any exit of its worker; 409 when it has ended already."""
        job = self.store.get_job(job_id)
        assert job is not None  # the route looked it up
        if job["status"] in ("running", "paused") and job["state"].get("handle") is not None:
            self._watch(job)
            job = self.store.get_job(job_id) or job
        if job["status"] in FINISHED:
            raise APIError(409, f"Job {job_id} has already {job['status']}", code="job_finished")
        return job
