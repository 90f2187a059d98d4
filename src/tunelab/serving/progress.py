"""What a running job's run folder says: its log lines and metrics as events, its checkpoints as
checkpoint objects, its ETA, and at the end its metrics CSV (OpenAI's result file) or its failure.

The run folder is the source of truth (summary.json, metrics.jsonl, checkpoints/); this module only
reads it, remembering in the job's state how far it has read, so a restarted server neither loses
nor repeats events.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tunelab.runs.registry import record_run
from tunelab.runs.rundir import read_summary, write_summary
from tunelab.serving.store import Store, new_id, now
from tunelab.training.checkpoint import CHECKPOINT, list_checkpoints

RESULTS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")


def run_dir_of(runs_dir: Path, job_id: str) -> Path | None:
    """The job's run folder (its recipe is named after the job), once `train` has made it."""
    found = sorted(p for p in runs_dir.glob(f"{job_id}-*") if (p / "summary.json").is_file())
    return found[-1] if found else None


def has_checkpoint(run_dir: Path | None) -> bool:
    return run_dir is not None and bool(list_checkpoints(run_dir / "checkpoints"))


def ingest(store: Store, job: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """New log lines, metrics and checkpoints of a job's worker, into the store; the updated job."""
    state = job["state"]
    offset = _log_events(store, job["id"], Path(state["job_dir"]) / "worker.log", state.get("log_offset", 0))
    updates: dict[str, Any] = {"log_offset": offset}
    run_dir = run_dir_of(runs_dir, job["id"])
    if run_dir is not None:
        updates["run_dir"] = str(run_dir)
        # Checkpoints first, lines second: a checkpoint's metrics are logged before it is saved, so
        # the lines read after the listing hold them (read before, a new checkpoint could miss them).
        saved = list_checkpoints(run_dir / "checkpoints")
        lines = _metric_lines(run_dir)
        updates.update(_metric_events(store, job, run_dir, lines))
        _checkpoint_objects(store, job, saved, lines)
    return store.update_job(job["id"], **updates)


def _log_events(store: Store, job_id: str, log: Path, offset: int) -> int:
    """Each complete line the worker printed since `offset` becomes an event; returns the new offset."""
    if not log.is_file():
        return offset
    with log.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for raw in complete.decode("utf-8", errors="replace").split("\n"):
        line = raw.split("\r")[-1].strip()  # a progress bar redraws with \r: its last state is the line
        if line:
            level = "error" if line.startswith(("error:", "Traceback")) else "info"
            store.add_event(job_id, line, level=level)
    return offset + len(complete)


def _metric_events(
    store: Store, job: dict[str, Any], run_dir: Path, lines: list[dict[str, Any]]
) -> dict[str, Any]:
    """metrics.jsonl lines not seen yet, as OpenAI's `metrics` events; the step, total and ETA.

    A line is known by its step and its keys (a step logs its training and its validation line
    separately), so the lines a resumed segment logs again after its checkpoint are not repeated."""
    state = job["state"]
    summary = read_summary(run_dir)
    total = summary.total_steps
    seen_step, seen = state.get("metrics_step", -1), set(state.get("metrics_seen", []))
    for values in lines:
        step, key = int(values["step"]), ",".join(sorted(values))
        if step < seen_step or (step == seen_step and key in seen):
            continue
        if step > seen_step:
            seen_step, seen = step, set()
        seen.add(key)
        store.add_event(job["id"], _metric_message(values, total), data=_openai_metrics(values, total))
    updates = {"metrics_step": seen_step, "metrics_seen": sorted(seen), "step": summary.steps}
    if total:
        updates["estimated_finish"] = _eta(state, summary.steps, total)
    return updates


def _metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _metric_message(values: dict[str, Any], total: int | None) -> str:
    of = f"/{total}" if total else ""
    parts = [
        f"{name.removeprefix('val_').replace('_', ' ')}={value:.4f}"
        for name, value in values.items()
        if name in ("loss", "val_loss")
    ]
    kind = "validation" if "val_loss" in values else "training"
    return f"Step {values['step']}{of}: {kind} {', '.join(parts) or 'metrics'}"


def _openai_metrics(values: dict[str, Any], total: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {"step": values["step"], "total_steps": total}
    if "loss" in values:
        data["train_loss"] = values["loss"]
    if "val_loss" in values:
        data["valid_loss"] = values["val_loss"]
    return {**data, **{f"tunelab_{k}": v for k, v in values.items() if k not in ("step", "loss", "val_loss")}}


def _eta(state: dict[str, Any], step: int, total: int) -> int | None:
    started, start_step = state.get("segment_started"), state.get("segment_start_step", 0)
    done = step - start_step
    if not started or done <= 0:
        return None
    per_step = (time.time() - started) / done
    return int(time.time() + per_step * max(total - step, 0))


def _checkpoint_objects(
    store: Store, job: dict[str, Any], saved: list[Path], lines: list[dict[str, Any]]
) -> None:
    from tunelab.serving.jobs import fine_tuned_name

    for path in saved:
        match = CHECKPOINT.match(path.name)
        assert match is not None
        step = int(match.group(1))
        metrics = _metrics_at(lines, step)
        name = f"{fine_tuned_name(job)}:ckpt-step-{step}"
        if store.add_checkpoint(job["id"], step, metrics, name):
            store.add_event(
                job["id"],
                f"Checkpoint created at step {step}",
                data={"step": step, **metrics},
                kind="message",
            )


def _metrics_at(lines: list[dict[str, Any]], step: int) -> dict[str, Any]:
    """OpenAI's checkpoint metrics: the newest training and validation values up to `step`."""
    metrics: dict[str, Any] = {"step": step}
    for values in lines:
        if values["step"] > step:
            break
        if "loss" in values:
            metrics["train_loss"] = values["loss"]
        if "val_loss" in values:
            metrics["valid_loss"] = values["val_loss"]
            # tunelab's validation is always a pass over the whole split: at this step, it is full.
            metrics["full_valid_loss"] = values["val_loss"] if values["step"] == step else None
    return {key: value for key, value in metrics.items() if value is not None}


def failure_reason(state: dict[str, Any], code: int) -> str:
    """The run's recorded error, else the worker's last `error:` line, else its exit status."""
    run_dir = state.get("run_dir")
    if run_dir and (Path(run_dir) / "summary.json").is_file():
        error = read_summary(Path(run_dir)).error
        if error:
            return error
    log = Path(state["job_dir"]) / "worker.log"
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    return errors[-1] if errors else f"the training process ended with exit status {code}"


def write_results_file(store: Store, files_dir: Path, job_id: str, run_dir: Path) -> str:
    """The step metrics as OpenAI's results CSV, stored as a file (purpose fine-tune-results)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(RESULTS_COLUMNS)
    last_valid: Any = ""
    for values in _metric_lines(run_dir):
        last_valid = values.get("val_loss", last_valid)
        if "loss" in values:
            writer.writerow([values["step"], values["loss"], "", last_valid, ""])
    file_id = new_id("file-")
    path = files_dir / f"{file_id}.csv"
    files_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(out.getvalue(), encoding="utf-8")
    store.add_file(
        {
            "id": file_id,
            "filename": f"{job_id}-step_metrics.csv",
            "purpose": "fine-tune-results",
            "bytes": path.stat().st_size,
            "created_at": now(),
            "path": str(path),
            "status": "processed",
            "status_details": None,
        }
    )
    return file_id


def mark_cancelled(run_dir: Path, runs_dir: Path) -> None:
    """A cancelled job's run folder says so, and keeps no final/ that could pass for a result."""
    summary = read_summary(run_dir)
    if summary.status == "completed":
        return  # it finished before the cancel arrived: a complete run is a true record
    shutil.rmtree(run_dir / "final", ignore_errors=True)
    summary.status, summary.error = "cancelled", "cancelled through the API"
    write_summary(run_dir, summary)
    recipe_yaml = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    record_run(runs_dir, run_id=run_dir.name, recipe_yaml=recipe_yaml, data_hash=None, summary=summary)
