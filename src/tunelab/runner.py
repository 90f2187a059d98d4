"""`tunelab train` as a library call: recipe in, complete run folder out.

Order matters: everything that can fail on user input (recipe, data files, model, tokenisation,
pre-flight checks) runs *before* the run folder exists, so a bad input leaves no folder at all;
once training starts, any failure marks the folder `failed`, never `completed`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.config import Recipe, check_host, load_recipe, migrate, recipe_to_yaml, source_name
from tunelab.data import cache as data_cache
from tunelab.data import mixture
from tunelab.data.packing import check_packing_supported, collate_packed
from tunelab.data.pipeline import (
    CHAT_TASKS,
    PreparedData,
    Records,
    describe,
    load_records,
    prepare_chat_tokenizer,
    tokenize_records,
    write_prepared,
)
from tunelab.data.tokenize import Example, collate
from tunelab.errors import TunelabError
from tunelab.evaluation.forgetting import load_reference
from tunelab.evaluation.forgetting import score as score_reference
from tunelab.evaluation.metrics import evaluate
from tunelab.evaluation.scoring import (
    classification_eval,
    describe_forgetting,
    forgetting_check,
    format_metrics,
    is_adapter,
    score_baselines,
    split_prefix,
)
from tunelab.models.adapters import is_bottleneck, save_bottleneck
from tunelab.models.load import (
    LoadedModel,
    check_sequence_length,
    load_model,
    load_tokenizer,
    quantisation_for,
)
from tunelab.models.methods import apply_method, count_parameters
from tunelab.runs.registry import record_run
from tunelab.runs.report import write_report
from tunelab.runs.rundir import MetricsLog, create_run_dir, read_summary, write_summary, write_text_atomic
from tunelab.training import checkpoint
from tunelab.training.loop import Hooks, MicroBatches, TrainState, eval_batches, fit
from tunelab.training.objectives import OBJECTIVES, Objective
from tunelab.training.precision import (
    Precision,
    describe_precision,
    make_accelerator,
    precision_for,
    upcast_trainable,
)
from tunelab.training.schedule import build_optimizer, build_scheduler, total_steps
from tunelab.training.speed import compile_blocks, enable_gradient_checkpointing


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    is_main_process: bool = True  # under DDP every process returns; only the main one should report


def train(recipe: Recipe, *, resume: Path | None = None, console: Console | None = None) -> TrainResult:
    started = time.time()
    set_seed(recipe.train.seed)  # before loading: the new head and LoRA weights are drawn from it
    precision = precision_for(recipe)
    accelerator = make_accelerator(precision.mixed_precision)
    if not accelerator.is_main_process:
        console = Console(quiet=True)  # one voice under DDP
    console = console or Console(stderr=True, soft_wrap=True)
    resume_from = _checkpoint_to_resume(resume, recipe, console) if resume else None

    check_host(recipe)
    check_sequence_length(recipe)
    tokenizer = load_tokenizer(recipe.model)
    cache_key = data_cache.cache_key(recipe, tokenizer)  # before the data stage gives it a chat template
    data, records, cached_files = _prepare_data(recipe, tokenizer, cache_key, console)
    loaded = load_for_training(recipe, data.label_map, tokenizer, precision)
    console.print(describe(data.report))
    for note in data.notes:
        console.print(f"[yellow]note:[/] {note}")
    baselines = None
    if resume is None:
        baselines = score_baselines(recipe, loaded, data, records, cached_files, accelerator, console)
    if loaded.new_modules:
        console.print(f"new (randomly initialised, trained in full): {', '.join(loaded.new_modules)}")
    model = attach_method(recipe, loaded, precision, data)
    trainable, total = count_parameters(model)
    console.print(
        f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f}%) "
        f"- {recipe.method.name} on {loaded.source}"
    )
    console.print(f"precision: {describe_precision(precision)}")

    if data.packed:
        check_packing_supported(model)

    run_dir = resume if resume else _shared_run_dir(recipe, accelerator)
    summary = _initial_summary(recipe, run_dir, loaded.source, data, trainable, total, resume)
    summary["precision"] = precision.as_dict()
    if baselines is not None:
        summary["baselines"] = baselines
    if accelerator.is_main_process:
        write_summary(run_dir, summary)
        _register(recipe, run_dir, summary, data_hash=data_cache.data_digest(recipe))
        _write_data_folder(recipe, run_dir / "data", data, records, cached_files, cache_key)
    try:
        summary = _train_in_run_dir(
            recipe,
            model,
            loaded.tokenizer,
            data,
            accelerator,
            run_dir,
            summary,
            resume_from,
            console,
            started,
        )
    except BaseException as exc:
        # Ctrl-C is not a failure: the run can be resumed from its last checkpoint. `steps` is the
        # live count the loop kept in the summary (see _train_in_run_dir's hooks).
        summary.update(
            status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
            error=_describe(exc),
            wall_s=_wall(summary, started),
            peak_mem_mb=peak_memory_mb(),
        )
        if accelerator.is_main_process:
            write_summary(run_dir, summary)
            _register(recipe, run_dir, summary)
            _write_report_quietly(run_dir)
        raise
    if accelerator.is_main_process:
        _register(recipe, run_dir, summary)
        summary["report"] = str(write_report(run_dir))
        write_summary(run_dir, summary)
    return TrainResult(run_dir=run_dir, summary=summary, is_main_process=accelerator.is_main_process)


def load_for_training(
    recipe: Recipe, label_map: dict[str, int] | None, tokenizer: Any, precision: Precision
) -> LoadedModel:
    """The base model as training loads it: quantised as the method asks, in the precision's weight dtype."""
    return load_model(
        recipe.model,
        recipe.task,
        label_map,
        tokenizer=tokenizer,
        quantisation=quantisation_for(recipe.method.name, recipe.model.load_in_8bit),
        dtype=precision.weights,
    )


def attach_method(
    recipe: Recipe,
    loaded: LoadedModel,
    precision: Precision,
    data: PreparedData,
    *,
    compile_model: bool = True,
) -> Any:
    """The loaded base made ready to train: checkpointing (before peft wraps it), the method (training
    the rows of tokens the data stage added too), float32 master weights under autocast, and regional
    compilation (`compile_model=False` skips it)."""
    if recipe.train.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    new_tokens = loaded.tokenizer.convert_tokens_to_ids(data.added_tokens) if data.added_tokens else []
    model = apply_method(loaded.model, recipe.method, recipe.task, loaded.new_modules, new_tokens)
    upcast_trainable(model, precision)
    if recipe.train.compile and compile_model:
        compile_blocks(model)
    return model


def _train_in_run_dir(
    recipe: Recipe,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    accelerator: Accelerator,
    run_dir: Path,
    summary: dict[str, Any],
    resume_from: Path | None,
    console: Console,
    started: float,
) -> dict[str, Any]:
    cfg = recipe.train
    objective = build_objective(recipe, model, accelerator)
    pad_id = tokenizer.pad_token_id
    batches, mixed = _train_batches(recipe, data, pad_id, accelerator)
    steps = total_steps(cfg, batches.per_epoch)
    if mixed is not None:  # a progressive schedule places each draw on the run's whole length
        mixed.epochs = steps * cfg.grad_accum / batches.per_epoch
        summary["mix"] = mixed.describe()
    optimizer = build_optimizer(model, cfg)
    # The scheduler is not passed to prepare(): accelerate's wrapper steps it once per process.
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, cfg, steps)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)
    accelerator.register_save_state_pre_hook(checkpoint.keep_only_trainable_weights)

    collate_fn = collate_for(recipe.task)

    def run_eval(split: str) -> dict[str, float]:
        """The split's metrics, then each dataset's own (val_<task>_loss) in a multi-dataset run."""
        examples = data.splits[split]
        metrics: dict[str, float] = {}
        for name, subset in [("", examples), *_per_dataset(examples)]:
            prefix = f"{split_prefix(split)}_{name}" if name else split_prefix(split)
            split_batches = eval_batches(subset, cfg.batch_size, pad_id, accelerator, collate_fn)
            metrics.update(evaluate(model, split_batches, objective, recipe.task, accelerator, prefix=prefix))
        return metrics

    reference = load_reference(recipe.eval.reference) if recipe.eval.reference else None
    if reference is not None and not is_adapter(model) and resume_from is None:
        # full / freeze: "before" is the base model, i.e. these weights before the first step.
        summary["forgetting_before"] = score_reference(accelerator.unwrap_model(model), tokenizer, reference)
        if accelerator.is_main_process:
            write_summary(run_dir, summary)  # a resumed run needs it: the base weights are gone by then
    if resume_from is not None:
        checkpoint.load_checkpoint(accelerator, resume_from)
        console.print(f"resumed from {resume_from} (step {state.step} of {steps})")
    elif before_split := next((split for split in ("test", "validation") if split in data.splits), None):
        # The same model before any training, on the split the headline after-score comes from: the
        # test split, else validation (whose last pass, on the final weights, is the after-score).
        summary["baseline"] = run_eval(before_split)
        summary["baseline_split"] = before_split
        console.print(f"before training ({before_split}): {format_metrics(summary['baseline'])}")
        if accelerator.is_main_process:
            write_summary(run_dir, summary)  # kept when the process dies: a resumed run cannot redo it

    log = MetricsLog(
        run_dir, enabled=accelerator.is_main_process, resume_step=state.step if resume_from else None
    )
    progress = _progress_bar(console, accelerator.is_main_process)
    task = progress.add_task("train", total=steps, completed=state.step, loss=float("nan"), tps=0.0)
    hooks = Hooks(
        evaluate=(lambda: run_eval("validation")) if "validation" in data.splits else None,
        save_checkpoint=lambda step: _checkpoint_and_record(
            accelerator, run_dir, step, cfg.keep_last, summary, state, started
        ),
        log=lambda step, values: _log_and_count(log, summary, state, step, values),
        progress=lambda step, loss, tps: progress.update(task, completed=step, loss=loss, tps=tps),
    )
    with progress:
        fit(model, optimizer, scheduler, objective, batches, cfg, steps, state, accelerator, hooks)
    log.close()

    metrics = {"train_loss_last": _last_train_loss(run_dir), **state.last_metrics}
    if "test" in data.splits:
        metrics.update(run_eval("test"))
    scored: dict[str, Any] = {}
    if recipe.task == "classify":
        scored = classification_eval(recipe, model, data, summary, metrics, pad_id, accelerator) or {}
        if scored:
            metrics[f"{scored['split_prefix']}_macro_f1"] = scored["classification"]["macro"]["f1"]
    if reference is not None:
        forgetting = forgetting_check(recipe, model, tokenizer, reference, summary, accelerator)
        scored["forgetting"] = summary["forgetting"] = forgetting
        console.print(describe_forgetting(forgetting))
    if scored and accelerator.is_main_process:
        write_text_atomic(run_dir / "eval.json", json.dumps(scored, indent=2) + "\n")
    if accelerator.is_main_process:
        export_final(accelerator.unwrap_model(model), tokenizer, run_dir, recipe, data, summary["precision"])
    summary.update(
        status="completed",
        steps=state.step,
        total_steps=steps,
        tokens=state.tokens,
        stopped_early=state.stopped_early,
        wall_s=_wall(summary, started),
        peak_mem_mb=peak_memory_mb(),
        metrics=metrics,
        finished_at=_now(),
    )
    summary.pop("error", None)
    if accelerator.is_main_process:
        write_summary(run_dir, summary)
    return summary


def _register(recipe: Recipe, run_dir: Path, summary: dict[str, Any], data_hash: str | None = None) -> None:
    recipe_yaml = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    record_run(
        recipe.output.dir, run_id=run_dir.name, recipe_yaml=recipe_yaml, data_hash=data_hash, summary=summary
    )


def _write_report_quietly(run_dir: Path) -> None:
    """A failed run still gets its report when possible; a report problem must not hide the failure."""
    with contextlib.suppress(Exception):  # the original error is being raised; it matters more
        write_report(run_dir)


def _prepare_data(
    recipe: Recipe, tokenizer: Any, cache_key: str, console: Console
) -> tuple[PreparedData, Records | None, Path | None]:
    """The data stage, or its cached result: (prepared data, records if computed, cached split files)."""
    hit = data_cache.load(data_cache.cache_dir(recipe), cache_key)
    if hit is not None:
        prepared, files = hit
        if recipe.task in CHAT_TASKS:  # the cached tokens were rendered with its template and markers
            prepared.chat_template, prepared.added_tokens = prepare_chat_tokenizer(recipe, tokenizer)
        console.print(f"data: prepared before, read from the cache ({files.parent})")
        return prepared, None, files
    records = load_records(recipe)
    return tokenize_records(recipe, records, tokenizer), records, None


def _write_data_folder(
    recipe: Recipe,
    target: Path,
    data: PreparedData,
    records: Records | None,
    cached_files: Path | None,
    cache_key: str,
) -> None:
    """run_dir/data: exactly what is trained on, and report.json; new results also go to the cache."""
    if cached_files is not None:
        shutil.copytree(cached_files, target, dirs_exist_ok=True)
        return
    assert records is not None
    write_prepared(target, records, data)
    data_cache.save(data_cache.cache_dir(recipe), cache_key, data, target)


def _train_batches(
    recipe: Recipe, data: PreparedData, pad_id: int, accelerator: Accelerator
) -> tuple[MicroBatches, MixedOrder | None]:
    cfg = recipe.train
    collate_fn = collate_packed if data.packed else collate_for(recipe.task)
    train = data.splits["train"]
    mixed = MixedOrder(recipe, train) if any("task" in example for example in train) else None
    batches = MicroBatches(
        train,
        cfg.batch_size,
        cfg.seed,
        pad_id,
        accelerator,
        collate_fn=collate_fn,
        order_fn=mixed,
        group_by_length=cfg.group_by_length and not data.packed,
        grad_accum=cfg.grad_accum,
    )
    return batches, mixed


def collate_for(task: str) -> Callable[[list[Example], int], dict[str, torch.Tensor]]:
    if task in ("preference", "reward"):
        from tunelab.data.pairs import collate_pairs

        return collate_pairs
    return collate


def build_objective(recipe: Recipe, model: Any, accelerator: Accelerator) -> Objective:
    """The task's loss. DPO and IPO compare against a reference: the same model with its adapter
    switched off (no second copy), or for full/freeze a frozen copy of the weights before training."""
    if recipe.task == "reward":
        from tunelab.training.preference import reward_objective

        return reward_objective()
    if recipe.task != "preference":
        return OBJECTIVES[recipe.task]
    from tunelab.training.preference import (
        adapter_disabled_reference,
        frozen_copy_reference,
        preference_objective,
    )

    loss = recipe.preference
    reference = None
    if loss.objective != "orpo":
        reference = adapter_disabled_reference() if is_adapter(model) else frozen_copy_reference(model)
    return preference_objective(loss.objective, loss.beta, reference)


class MixedOrder:
    """The training order of a multi-dataset run (see data/mixture.py), as MicroBatches' order_fn."""

    def __init__(self, recipe: Recipe, train: list[Example]) -> None:
        data = recipe.data
        names = [str(example.get("task", "")) for example in train]
        weights = {source_name(s): s.weight for s in data.sources}
        self.groups = [
            mixture.Group(
                name,
                [i for i, n in enumerate(names) if n == name],
                weights.get(name, 1.0),
                name == mixture.REPLAY,
            )
            for name in dict.fromkeys(names)
        ]
        self.plan = mixture.plan(
            self.groups,
            strategy=data.mixing.strategy,
            temperature=data.mixing.temperature,
            replay_ratio=data.replay.ratio if data.replay else None,
            progressive=(data.progressive.start, data.progressive.end) if data.progressive else None,
        )
        self.seed = recipe.train.seed
        self.epochs = recipe.train.epochs

    def __call__(self, epoch: int) -> list[int]:
        return mixture.epoch_order(self.groups, self.plan, self.seed, epoch, self.epochs)

    def describe(self) -> dict[str, Any]:
        return {
            "draws_per_epoch": self.plan.draws_per_epoch,
            "shares_of_new_data": self.plan.new_shares,
            "replay_share_start": self.plan.replay_share(0.0),
            "replay_share_end": self.plan.replay_share(1.0),
        }


def _per_dataset(examples: list[Example]) -> list[tuple[str, list[Example]]]:
    names = [str(e["task"]) for e in examples if e.get("task")]
    if not names:
        return []
    return [(name, [e for e in examples if e.get("task") == name]) for name in dict.fromkeys(names)]


def export_final(
    model: Any, tokenizer: Any, run_dir: Path, recipe: Recipe, data: PreparedData, precision: dict[str, str]
) -> Path:
    """Write final/ (weights in safetensors, tokenizer, label map) to a temp folder, then rename.

    tunelab.json records the precision the run trained in, so a restore computes as training did."""
    final, tmp = run_dir / "final", run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if is_bottleneck(model):  # our own adapters: their weights and settings only, like a peft adapter
        save_bottleneck(model, tmp)
    elif is_adapter(model):
        # Only the adapter: tokens the data stage added are in it as trained rows (trainable tokens), so
        # peft's copy of the whole resized embedding matrices is not needed (restore grows the base).
        model.save_pretrained(str(tmp), save_embedding_layers=False)
    else:
        model.save_pretrained(str(tmp))  # safetensors
    tokenizer.save_pretrained(str(tmp))  # carries the chat template used, so inference renders alike
    info = {
        "task": recipe.task,
        "method": recipe.method.name,
        "base_model": recipe.model.name,
        "chat_template": data.chat_template,
        "added_tokens": data.added_tokens,  # the base needs rows for them (resize_token_embeddings)
        "precision": precision,
    }
    (tmp / "tunelab.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if data.label_map is not None:
        (tmp / "labels.json").write_text(json.dumps(data.label_map, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_and_train(path: str, overrides: list[str], resume: Path | None, console: Console) -> TrainResult:
    return train(load_recipe(path, overrides), resume=resume, console=console)


# ---------------------------------------------------------------------------------------------
# helpers


def _shared_run_dir(recipe: Recipe, accelerator: Accelerator) -> Path:
    """The main process names and creates the folder; the others are told its name."""
    name = [str(create_run_dir(recipe)) if accelerator.is_main_process else None]
    broadcast_object_list(name)
    return Path(str(name[0]))


def _checkpoint_to_resume(run_dir: Path, recipe: Recipe, console: Console) -> Path:
    previous = read_summary(run_dir)
    if previous.get("status") == "completed":
        raise TunelabError(f"{run_dir} already completed", fix="start a new run without --resume")
    latest = checkpoint.list_checkpoints(run_dir / "checkpoints")
    if not latest:
        raise TunelabError(
            f"{run_dir} has no complete checkpoint to resume from", fix="start a new run without --resume"
        )
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    migrate(saved)  # an older run's recipe.yaml, in today's layout: moved settings are not changes
    changed = recipe_changes(saved, recipe)
    refused = {path: change for path, change in changed.items() if path not in SAFE_ON_RESUME}
    if refused:
        raise TunelabError(
            f"--resume continues {run_dir} as it was set up; the recipe now differs in {', '.join(refused)}",
            problems=[f"{path}: {old!r} in the run, {new!r} now" for path, (old, new) in refused.items()],
            fix="resume with the run's own recipe (its recipe.yaml), or start a new run with the change; "
            f"these may change on resume: {', '.join(sorted(SAFE_ON_RESUME))}",
        )
    if changed:  # applied and recorded: recipe.yaml says what the rest of the run uses
        console.print(
            f"[yellow]note:[/] resuming with {', '.join(f'{p}={n!r}' for p, (_, n) in changed.items())}"
        )
        write_text_atomic(run_dir / "recipe.yaml", recipe_to_yaml(recipe))
    return latest[-1]


# What may change when a run resumes: how often it logs, evaluates and saves, and how many checkpoints
# it keeps. Everything else (lr, batch size, data, schedule, method) would make the rest of the run a
# different run from the one its checkpoint, metrics and recipe.yaml describe.
SAFE_ON_RESUME = frozenset({"train.log_every", "train.eval_every", "train.save_every", "train.keep_last"})


def recipe_changes(saved: dict[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """Dotted recipe paths whose value differs between a run's saved recipe and `recipe`."""
    now = yaml.safe_load(recipe_to_yaml(recipe))

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(value, dict):
            return {prefix: value}
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out

    before, after = flat(saved or {}), flat(now)
    return {
        p: (before.get(p), after.get(p))
        for p in sorted(before.keys() | after.keys())
        if before.get(p) != after.get(p)
    }


def _initial_summary(
    recipe: Recipe,
    run_dir: Path,
    source: str,
    data: PreparedData,
    trainable: int,
    total: int,
    resume: Path | None,
) -> dict[str, Any]:
    previous = read_summary(run_dir) if resume else {}
    return {
        "name": recipe.name,
        "task": recipe.task,
        "method": recipe.method.name,
        "model": source,
        "run_dir": str(run_dir),
        "status": "running",
        "started_at": previous.get("started_at", _now()),
        "steps": previous.get("steps", 0),
        "tokens": previous.get("tokens", 0),
        "wall_s": previous.get("wall_s", 0.0),
        # Time of the segments before this one (0 for a fresh run): wall_s adds this segment's to it.
        "earlier_segments_s": previous.get("wall_s", 0.0),
        "segments": previous.get("segments", 0) + 1,
        "pid": os.getpid(),  # `runs list` tells a live run from one whose process is gone
        "host": socket.gethostname(),
        "peak_mem_mb": previous.get("peak_mem_mb", 0.0),
        "trainable_params": trainable,
        "total_params": total,
        "examples": {split: len(examples) for split, examples in data.splits.items()},
        "notes": data.notes,
        "baseline": previous.get("baseline", {}),
        **({"baseline_split": previous["baseline_split"]} if "baseline_split" in previous else {}),
        "baselines": previous.get("baselines", {}),
        **({"forgetting_before": previous["forgetting_before"]} if "forgetting_before" in previous else {}),
        "metrics": {},
    }


def _last_train_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    losses = [row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row]
    return losses[-1] if losses else None


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("step {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _log_and_count(
    log: MetricsLog, summary: dict[str, Any], state: TrainState, step: int, values: dict[str, float]
) -> None:
    """A logged step also moves the summary's live counts (written at the next checkpoint or stop)."""
    summary.update(steps=step, tokens=state.tokens)
    log.log(step, values)


def _checkpoint_and_record(
    accelerator: Accelerator,
    run_dir: Path,
    step: int,
    keep_last: int,
    summary: dict[str, Any],
    state: TrainState,
    started: float,
) -> Path:
    """Save a checkpoint, then record in summary.json what it holds: a run killed after it (kill -9,
    a lost machine) still shows its steps, tokens and time so far, and where it can resume from."""
    path = checkpoint.save_checkpoint(accelerator, run_dir / "checkpoints", step, keep_last)
    summary.update(steps=state.step, tokens=state.tokens, wall_s=_wall(summary, started))
    summary["last_checkpoint"] = path.name
    if accelerator.is_main_process:
        write_summary(run_dir, summary)
    return path


def _wall(summary: dict[str, Any], started: float) -> float:
    """The whole run's wall time: every earlier segment (resumed runs) plus this one so far."""
    return round(float(summary.get("earlier_segments_s", 0.0)) + time.time() - started, 2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
