"""Experiment trackers beside metrics.jsonl: MLflow and Weights & Biases, through accelerate's own
tracker classes (`output.trackers`). TensorBoard is written by MetricsLog itself, as before.

MLflow logs to `output.mlflow_uri`, by default a SQLite store next to the run registry
(`<output.dir>/mlflow.db`), so nothing needs a server; `mlflow ui --backend-store-uri` reads it.
W&B runs offline unless WANDB_API_KEY is set, so a machine with no network still logs (`wandb sync`
uploads later). A resumed run continues its MLflow run: the run id is kept in the run folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config.loading import flatten
from tunelab.errors import TunelabError
from tunelab.files import TRACKERS_FILE
from tunelab.runs.summary import failure_status

if TYPE_CHECKING:
    from tunelab.config import Recipe

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module it needs


def check_trackers(names: Sequence[str]) -> None:
    """Before the run folder: a tracker whose package is missing is an error, not a silent no-op."""
    missing = [n for n in names if n in PACKAGES and importlib.util.find_spec(PACKAGES[n]) is None]
    if missing:
        raise TunelabError(
            f"output.trackers asks for {', '.join(missing)}, which is not installed",
            fix=" and ".join(f"pip install {'mlflow' if n == 'mlflow' else n}" for n in missing)
            + ", or remove it from output.trackers",
        )


def open_trackers(recipe: Recipe, run_dir: Path, resumed: bool) -> list[Any]:
    """Started accelerate trackers for the recipe's mlflow/wandb entries (TensorBoard is not one)."""
    saved = _read_state(run_dir)
    experiment = recipe.output.tags.get("study") or recipe.name
    trackers: list[Any] = []
    if "mlflow" in recipe.output.trackers:
        trackers.append(_mlflow(recipe, run_dir, experiment, saved.get("mlflow_run_id") if resumed else None))
        saved["mlflow_run_id"] = trackers[-1].active_run.info.run_id
    if "wandb" in recipe.output.trackers:
        trackers.append(_wandb(recipe, run_dir, experiment))
    if trackers and not resumed:
        config = flatten(json.loads(recipe.model_dump_json(exclude={"search"})))
        for tracker in trackers:
            tracker.store_init_configuration(config)
    (run_dir / TRACKERS_FILE).write_text(json.dumps(saved), encoding="utf-8")
    return trackers


def finish(tracker: Any, error: BaseException | None) -> None:
    """End the tracker's run; an MLflow run that did not complete is marked KILLED (interrupted,
    pruned) or FAILED, so its UI does not show it as finished."""
    if error is not None and getattr(tracker, "name", None) == "mlflow":
        import mlflow

        mlflow.end_run(status="FAILED" if failure_status(error) == "failed" else "KILLED")
        return
    tracker.finish()


def mlflow_uri(recipe: Recipe) -> str:
    return recipe.output.mlflow_uri or f"sqlite:///{Path(recipe.output.dir).resolve() / 'mlflow.db'}"


def _mlflow(recipe: Recipe, run_dir: Path, experiment: str, run_id: str | None) -> Any:
    import mlflow
    from accelerate.tracking import MLflowTracker

    mlflow.set_tracking_uri(mlflow_uri(recipe))
    tags = {**recipe.output.tags, "tunelab.run_dir": str(run_dir)}
    tracker = MLflowTracker(experiment_name=experiment, run_id=run_id, tags=tags, run_name=run_dir.name)
    tracker.start()
    return tracker


def _wandb(recipe: Recipe, run_dir: Path, experiment: str) -> Any:
    from accelerate.tracking import WandBTracker

    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    tracker = WandBTracker(
        experiment, name=run_dir.name, dir=str(run_dir), tags=list(recipe.output.tags.values())
    )
    tracker.start()
    return tracker


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / TRACKERS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
