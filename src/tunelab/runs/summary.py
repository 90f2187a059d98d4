"""summary.json, typed: what a run is and how it went, written by the run and read by the registry,
the report, the model card and the CLI.

Older run folders keep working: `RunSummary.from_json` reads the names they used (`baseline` for the
untrained model's scores, `baseline_split`), and keys it does not know are kept as they were.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tunelab.errors import RunPruned

# Names older summaries used, and what they are called now.
RENAMED = {"baseline": "before_training", "baseline_split": "before_training_split"}


@dataclass
class RunSummary:
    name: str = ""
    task: str = ""
    method: str = ""
    model: str = ""  # the base model, as loaded (folder or Hub id)
    weights_from: dict[str, Any] | None = (
        None  # a GGUF base's file {gguf, sha256, bytes}, converted to `model`
    )
    run_dir: str = ""
    status: str = "running"  # running, completed, failed, interrupted, cancelled (tunelab serve)
    started_at: str = ""
    finished_at: str | None = None
    steps: int = 0  # optimizer steps done (the live count while running)
    total_steps: int | None = None
    tokens: int = 0  # non-padding input tokens trained on
    stopped_early: bool = False
    wall_s: float = 0.0  # the whole run: every segment of a resumed run
    earlier_segments_s: float = 0.0  # the segments before this one
    segments: int = 1  # 1 + the times the run was resumed
    pid: int | None = None  # the training process, so `runs list` tells a live run from a dead one
    host: str | None = None
    last_checkpoint: str | None = None
    peak_mem_mb: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    precision: dict[str, str] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)  # per split, after tokenisation (and packing)
    # Each data file's sha256 by the recipe path naming it (data.train, data.test, ...), as trained on.
    data_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    mix: dict[str, Any] | None = None  # a multi-dataset run's mixture
    # The same model before any training, scored on `before_training_split` (test, else validation).
    before_training: dict[str, float] = field(default_factory=dict)
    before_training_split: str | None = None
    # The base model's zero-shot and few-shot scores (baselines.py), by name.
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    forgetting_before: float | None = None  # full/freeze: the reference scored before the first step
    forgetting: dict[str, Any] | None = None
    # train.privacy: the target and the epsilon spent (from the accountant), the noise and sampling rate
    privacy: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # the fine-tuned model's
    error: str | None = None
    report: str | None = None  # report.html, once written
    tags: dict[str, str] = field(default_factory=dict)  # the recipe's output.tags (a study, a trial)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer or older summary.json

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {RENAMED.get(key, key): value for key, value in raw.items()}
        summary = cls(**{key: value for key, value in values.items() if key in known})
        summary.extra = {key: value for key, value in values.items() if key not in known}
        return summary

    def to_json(self) -> dict[str, Any]:
        """The summary as summary.json holds it: unset optional fields left out."""
        data = asdict(self)
        extra = data.pop("extra")
        return {**{key: value for key, value in data.items() if value is not None}, **extra}


# What a run that did not complete records: its status and error (RunFolder.fail), and which way an
# experiment tracker ends its run (trackers.py).


def failure_status(exc: BaseException) -> str:
    """interrupted (Ctrl-C, SIGTERM: resumable), pruned (a search stopped it), else failed."""
    if isinstance(exc, RunPruned):
        return "pruned"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
