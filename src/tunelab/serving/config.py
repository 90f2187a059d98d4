"""`tunelab serve`'s settings: where it keeps its records, which base models it offers, and the
recipe settings its fine-tuning jobs start from.

A job is an ordinary run: its recipe is JOB_DEFAULTS, overlaid with `job_defaults`, then with the
model's own `recipe`, then with what the request sets (data files, epochs, batch size, lr, beta, seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import TunelabError

# What an OpenAI-style job means when the request leaves a setting "auto": LoRA on every linear layer,
# three epochs (OpenAI's default for small files), frequent checkpoints so a restarted job loses little.
JOB_DEFAULTS: dict[str, Any] = {
    "method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": "auto"},
    "train": {
        "epochs": 3,
        "batch_size": 8,
        "lr": 1.0e-4,
        "scheduler": "cosine",
        "warmup_ratio": 0.05,
        "log_every": 5,
        "save_every": 50,
        "keep_last": 3,
        "max_seq_len": 1024,
    },
}


class ServedModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Hub id, local folder or .gguf file of the base model.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="Recipe settings for its jobs.")
    kind: Literal["generate", "embed"] = Field(
        "generate", description="embed: an encoder for /v1/embeddings."
    )


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(Path("tunelab-serve"), description="Uploads, jobs and the registry live here.")
    host: str = "127.0.0.1"
    port: int = 8000
    models: dict[str, ServedModel] = Field(default_factory=dict)
    job_defaults: dict[str, Any] = Field(default_factory=dict, description="Recipe settings for every job.")
    max_upload_mb: float = Field(512, gt=0)
    concurrent_jobs: int = Field(1, ge=1, description="Jobs trained at once (one per device by default).")
    worker_restarts: int = Field(
        2, ge=0, description="Times a job's worker killed by a signal (OOM killer, lost node) is restarted."
    )
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = Field(None, description="runner ray: the cluster's dashboard address.")
    ray_num_gpus: float = Field(0.0, ge=0, description="runner ray: GPUs each job asks the cluster for.")
    max_batch: int = Field(16, ge=1, description="Chat requests decoded together in one forward pass.")
    batch_window_ms: float = Field(5.0, ge=0, description="How long a batch waits for more requests.")
    max_pending: int = Field(256, ge=1, description="Answers waiting for the engine before 429.")
    log_prompts: bool = Field(False, description="Log request bodies (prompts); off by default.")
    poll_s: float = Field(0.5, gt=0, description="How often the job supervisor looks at its jobs.")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def database(self) -> Path:
        from tunelab.runs.registry import registry_path

        return registry_path(self.runs_dir)  # the run registry's own file


def load_serve_config(path: Path | None, **overrides: Any) -> ServeConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key, value in overrides.items():
        if value is not None:  # --model adds to the file's models; other flags replace its values
            raw[key] = {**raw.get(key, {}), **value} if key == "models" else value
    try:
        config = ServeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise TunelabError(f"{path or 'serve settings'}: invalid", problems=problems) from None
    config.root = config.root.resolve()
    return config


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid onto `base`, section by section (nested dicts merge, other values replace). A section
    that names another method or kind (`name`) replaces the base's whole: LoRA's rank means nothing to
    full fine-tuning, and the recipe would refuse it."""
    out = dict(base)
    for key, value in over.items():
        mergeable = isinstance(value, dict) and isinstance(out.get(key), dict)
        if mergeable and value.get("name", out[key].get("name")) != out[key].get("name"):
            mergeable = False
        out[key] = merged(out[key], value) if mergeable else value
    return out
