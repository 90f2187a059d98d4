"""The run folder's file names, and atomic text writes: one home for both, below every stage.

Training (resume), evaluation (generations.jsonl) and the run records (runs/) all read or write
these files; keeping the names and the writer here, with nothing but the standard library and
errors.py under them, lets each of those stages use them without importing another stage.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# A run folder, runs/<name>-<timestamp>/ (runs/rundir.py creates it):
RECIPE_FILE = "recipe.yaml"  # the recipe as run (a resume may change what SAFE_ON_RESUME allows)
SUMMARY_FILE = "summary.json"  # runs/summary.py: RunSummary
METRICS_FILE = "metrics.jsonl"  # one line per logged step
GENERATIONS_FILE = "generations.jsonl"  # eval.metrics: every model's answers (evaluation/generative.py)
EVAL_FILE = "eval.json"  # the fine-tuned model's scores beside its baselines
REPORT_FILE = "report.html"
TRACKERS_FILE = "trackers.json"  # what a resumed run needs to continue its tracker runs (MLflow run id)
DATA_REPORT_FILE = "data/report.json"  # the data stage's report
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"


def write_text_atomic(path: Path, text: str) -> None:
    # A temp name of its own per writer (pid + random): two processes writing the same file (say, a
    # report regenerated while the run writes it) must not write into each other's temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_summary_json(run_dir: Path) -> Any:
    """summary.json as JSON (runs/rundir.py types it as a RunSummary); a folder without one is not a run."""
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        raise TunelabError(f"{run_dir} is not a tunelab run folder (no {SUMMARY_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def read_generation_rows(path: Path) -> list[dict[str, Any]]:
    """generations.jsonl's rows (none when the file is absent): one per scored example."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
