"""Fine-tuning jobs: the request body (OpenAI's), the recipe it maps onto, and the job object sent back.

A job is `tunelab train recipe.yaml` in a worker: the request picks the base model (one of the
server's `models`), the method (supervised: sft; dpo: preference) and the few hyper-parameters
OpenAI exposes; everything else comes from the server's defaults (serving/config.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tunelab.serving.config import JOB_DEFAULTS, ServeConfig, merged
from tunelab.serving.errors import APIError, not_found
from tunelab.serving.store import Store

Auto = Literal["auto"]
ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto | None = Field(None, description="auto: the server's train.epochs")
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = Field(None, description="times the server's train.lr")
    beta: float | Auto | None = Field(None, description="dpo only: preference.beta")


class MethodSettings(BaseModel):
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodSettings | None = None
    dpo: MethodSettings | None = None
    reinforcement: dict[str, Any] | None = None


class JobRequest(BaseModel):
    """POST /v1/fine_tuning/jobs, as the openai client sends it."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI, still sent by older scripts
    integrations: list[dict[str, Any]] | None = None

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def hyper(self) -> Hyperparameters:
        settings = getattr(self.method, self.method_type(), None) if self.method else None
        chosen = settings.hyperparameters if settings is not None else None
        return chosen or self.hyperparameters or Hyperparameters()


def check_request(request: JobRequest, config: ServeConfig, store: Store) -> None:
    """What OpenAI refuses at once (400/404); bad *contents* of a file fail later, in validating_files."""
    if request.method_type() == "reinforcement":
        raise APIError(
            400,
            "method.type 'reinforcement' is not supported; use supervised or dpo",
            param="method.type",
            code="unsupported_method",
        )
    if request.integrations:
        raise APIError(
            400,
            "integrations are not supported (tunelab logs to TensorBoard in the run folder)",
            param="integrations",
        )
    if request.model not in config.models or config.models[request.model].kind != "generate":
        offered = ", ".join(name for name, m in config.models.items() if m.kind == "generate") or "none"
        raise APIError(
            400,
            f"Model {request.model!r} is not available for fine-tuning; this server offers: {offered}",
            param="model",
            code="model_not_available",
        )
    for param in ("training_file", "validation_file"):
        file_id = getattr(request, param)
        if file_id is None:
            continue
        row = store.get_file(file_id)
        if row is None:
            raise not_found("file", file_id, param)
        if row["purpose"] != "fine-tune":
            raise APIError(400, f"{file_id} has purpose {row['purpose']!r}, not 'fine-tune'", param=param)
    hyper = request.hyper()
    if request.method_type() != "dpo" and hyper.beta is not None:
        raise APIError(400, "beta applies to dpo jobs only", param="method.supervised.hyperparameters.beta")


def job_recipe(job_id: str, request: JobRequest, config: ServeConfig, store: Store) -> dict[str, Any]:
    """The run's recipe: server defaults, the model's own settings, then the request's."""
    served = config.models[request.model]
    recipe = merged(merged(JOB_DEFAULTS, config.job_defaults), served.recipe)
    hyper, dpo = request.hyper(), request.method_type() == "dpo"
    train = recipe["train"]
    train["epochs"] = _chosen(hyper.n_epochs, train["epochs"])
    train["batch_size"] = _chosen(hyper.batch_size, train["batch_size"])
    train["lr"] = train["lr"] * float(_chosen(hyper.learning_rate_multiplier, 1.0))
    if request.seed is not None:
        train["seed"] = request.seed
    data = {**recipe.get("data", {}), "train": _file_path(store, request.training_file)}
    if request.validation_file:
        data["validation"] = _file_path(store, request.validation_file)
    recipe.update(name=job_id, data=data, output={"dir": str(config.runs_dir)})
    recipe["model"] = {**recipe.get("model", {}), "name": served.path}
    if dpo:
        recipe["task"] = "preference"
        preference = recipe.setdefault("preference", {"objective": "dpo"})
        preference["beta"] = _chosen(hyper.beta, preference.get("beta", 0.1))
    else:
        recipe.setdefault("task", "sft")
    return recipe


def fit_sequence_length(recipe: dict[str, Any]) -> str | None:
    """A job's train.max_seq_len (the server's default, which no request can change) cut to what the
    base model has positions for; the run would refuse it otherwise. The job's events say so."""
    from pydantic import ValidationError

    from tunelab.config import ModelConfig
    from tunelab.errors import TunelabError
    from tunelab.models.load import position_limit

    wanted = recipe["train"].get("max_seq_len")
    try:
        limit = position_limit(ModelConfig.model_validate(recipe["model"]))
    except (ValidationError, TunelabError):
        return None  # a bad model section is the recipe check's to report, with its path (400)
    if limit is None or not isinstance(wanted, int):
        return None
    limit -= int(recipe.get("method", {}).get("num_virtual_tokens") or 0)  # prefix/prompt take positions
    if wanted <= limit or limit < 1:
        return None
    recipe["train"]["max_seq_len"] = limit
    return (
        f"train.max_seq_len {wanted} is more than the base model has positions for; "
        f"the job trains on sequences of up to {limit} tokens"
    )


def resolved_hyperparameters(recipe: dict[str, Any], request: JobRequest) -> dict[str, Any]:
    """The values the job really uses, as OpenAI reports them once a job is created."""
    lr_multiplier = _chosen(request.hyper().learning_rate_multiplier, 1.0)
    values = {
        "n_epochs": recipe["train"]["epochs"],
        "batch_size": recipe["train"]["batch_size"],
        "learning_rate_multiplier": float(lr_multiplier),
    }
    if recipe["task"] == "preference":
        values["beta"] = recipe["preference"]["beta"]
    return values


def write_recipe(job_dir: Path, recipe: dict[str, Any]) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def fine_tuned_name(job: dict[str, Any]) -> str:
    """OpenAI's shape, `ft:<base>:<org>:<suffix>:<id>`, with tunelab as the organisation."""
    body = job["body"]
    return f"ft:{body['model']}:tunelab:{body.get('suffix') or ''}:{job['id'].removeprefix('ftjob-')}"


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    body, state = job["body"], job["state"]
    hyper = state["hyperparameters"]
    kind = state["method_type"]
    return {
        "object": "fine_tuning.job",
        "id": job["id"],
        "created_at": job["created_at"],
        "model": body["model"],
        "organization_id": "org-tunelab",
        "status": job["status"],
        "training_file": body["training_file"],
        "validation_file": body.get("validation_file"),
        "fine_tuned_model": state.get("fine_tuned_model"),
        "finished_at": state.get("finished_at"),
        "trained_tokens": state.get("trained_tokens"),
        "estimated_finish": state.get("estimated_finish") if job["status"] == "running" else None,
        "error": state.get("error"),
        "result_files": state.get("result_files", []),
        "seed": state["seed"],
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"},
        "method": {"type": kind, kind: {"hyperparameters": hyper}},
        "metadata": body.get("metadata"),
        "user_provided_suffix": body.get("suffix"),
        "integrations": [],
        # tunelab's own: where the run is, so a user can open its folder and report.html.
        "tunelab": {"run_dir": state.get("run_dir"), "report": state.get("report")},
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": row["id"],
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": json.loads(row["data_json"]) if row["data_json"] else None,
    }


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row["id"],
        "created_at": row["created_at"],
        "fine_tuning_job_id": row["job_id"],
        "step_number": row["step"],
        "fine_tuned_model_checkpoint": row["model"],
        "metrics": json.loads(row["metrics_json"]),
    }


def _chosen(value: Any, default: Any) -> Any:
    return default if value is None or value == "auto" else value


def _file_path(store: Store, file_id: str) -> str:
    row = store.get_file(file_id)
    assert row is not None  # check_request saw it
    return str(row["path"])
