"""`tunelab train` as a library call: recipe in, complete run folder out.

Order matters: everything that can fail on user input (recipe, machine, data files, model,
tokenisation) runs *before* the run folder exists, so a bad input leaves no folder at all; once
training starts, any failure marks the folder `failed` (or `interrupted`), never `completed`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from rich.console import Console

from tunelab.config import Recipe, check_host, load_recipe
from tunelab.data import cache as data_cache
from tunelab.data.describe import describe
from tunelab.data.pipeline import (
    PreparedData,
    Records,
    load_records,
    prepare_chat_tokenizer,
    tokenize_records,
)
from tunelab.data.written import write_prepared
from tunelab.errors import RunInterrupted, StopRequested
from tunelab.evaluation.canaries import audit, describe_audit
from tunelab.evaluation.canaries import metrics_of as canary_metrics
from tunelab.evaluation.context import TaskContext
from tunelab.evaluation.forgetting import load_reference
from tunelab.evaluation.forgetting import score as score_reference
from tunelab.evaluation.generative import ask, read_generations, write_generations
from tunelab.evaluation.passes import SplitEvaluator
from tunelab.evaluation.scoring import (
    chat_records,
    describe_forgetting,
    forgetting_check,
    format_metrics,
    generative_eval,
    held_out_split,
)
from tunelab.files import GENERATIONS_FILE, write_text_atomic
from tunelab.fitting import ValidationCallback, fit_in_run_folder
from tunelab.models.final import save_final
from tunelab.models.load import LoadedModel, check_sequence_length, load_tokenizer
from tunelab.models.methods import count_parameters, is_adapter
from tunelab.models.precision import Precision, describe_precision, precision_for
from tunelab.models.source import check_model
from tunelab.paraphrase import paraphraser_for
from tunelab.runs.lifecycle import RunFolder, initial_summary
from tunelab.runs.rundir import create_run_dir, last_train_loss
from tunelab.runs.summary import RunSummary
from tunelab.runs.trackers import check_trackers
from tunelab.tasks.registry import task_spec
from tunelab.training import checkpoint
from tunelab.training.precision import make_accelerator
from tunelab.training.resume import checkpoint_to_resume
from tunelab.training.setup import TrainingSetup, attach_method, build_training, load_for_training


@dataclass
class TrainResult:
    run_dir: Path
    summary: RunSummary
    is_main_process: bool = True  # under DDP every process returns; only the main one should report


@dataclass
class Prepared:
    """What the run starts from, all of it checked before the run folder exists."""

    data: PreparedData
    records: Records | None  # None on a data-cache hit
    cached_files: Path | None  # the cache's split files on a hit
    cache_key: str
    loaded: LoadedModel


def train(
    recipe: Recipe,
    *,
    resume: Path | None = None,
    console: Console | None = None,
    on_validation: ValidationCallback | None = None,
) -> TrainResult:
    """Train as `recipe` says, into a new run folder (or continue `resume`, a run folder, from its last
    checkpoint). Baselines and the before-training score come first, then the loop with its
    evaluations and checkpoints, then the test split, final/ and the report. `on_validation` sees
    each validation pass of the loop (step, metrics); raising RunPruned there ends the run `pruned`."""
    started = time.time()
    set_seed(recipe.train.seed)  # before loading: the new head and LoRA weights are drawn from it
    precision = precision_for(recipe)
    accelerator = make_accelerator(precision.mixed_precision)
    if not accelerator.is_main_process:
        console = Console(quiet=True)  # one voice under DDP
    console = console or Console(stderr=True, soft_wrap=True)
    resume_from = checkpoint_to_resume(resume, recipe, console) if resume else None
    prepared = _prepare(recipe, precision, console)
    baselines: dict[str, Any] | None = None
    baseline_answers: dict[str, list[str]] = {}
    if resume is None:
        baselines, baseline_answers = _baselines(recipe, prepared, accelerator, console)
    model = _trainable(recipe, prepared, precision, console)

    run_dir = resume if resume else _shared_run_dir(recipe, accelerator)
    summary = initial_summary(
        recipe, run_dir, prepared.loaded.source, prepared.data, count_parameters(model), resume is not None
    )
    summary.precision = precision.as_dict()
    if baselines is not None:
        summary.baselines = baselines
    summary.data_files = data_cache.file_digests(recipe.data)
    run = RunFolder(recipe, run_dir, summary, main=accelerator.is_main_process, started=started)
    run.start(data_cache.data_digest(recipe.data))
    if accelerator.is_main_process:
        _write_data_folder(recipe, run_dir / "data", prepared)
        if baseline_answers:  # in the folder from the start: a resumed run has no base model to ask
            write_generations(run_dir / GENERATIONS_FILE, ask(_scored_chats(prepared)), baseline_answers)
    try:
        _train_in_run_dir(recipe, model, prepared, accelerator, run, resume_from, console, on_validation)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: resumable, and the CLI says how
        run.fail(exc)
        raise _interrupted(run, exc, accelerator.is_main_process) from exc
    except BaseException as exc:
        run.fail(exc)
        raise
    return TrainResult(run_dir=run_dir, summary=run.summary, is_main_process=accelerator.is_main_process)


def _interrupted(run: RunFolder, exc: KeyboardInterrupt, main: bool) -> RunInterrupted:
    summary = run.summary
    graceful = isinstance(exc, StopRequested)  # the loop saved a checkpoint at this very step
    return RunInterrupted(run.run_dir, summary.steps, summary.last_checkpoint, graceful=graceful, main=main)


def load_and_train(path: str, overrides: list[str], resume: Path | None, console: Console) -> TrainResult:
    return train(load_recipe(path, overrides), resume=resume, console=console)


# ---------------------------------------------------------------------------------------------
# Before the run folder


def _prepare(recipe: Recipe, precision: Precision, console: Console) -> Prepared:
    """The machine, the model's positions, the data stage (or its cache) and the model, in that order."""
    check_host(recipe)
    check_model(recipe.model)  # a damaged weight file is named before the data stage's work
    check_sequence_length(recipe)
    check_trackers(recipe.output.trackers)
    tokenizer = load_tokenizer(recipe.model, recipe.task)
    cache_key = data_cache.cache_key(recipe, tokenizer)  # before the data stage gives it a chat template
    data, records, cached_files = _prepare_data(recipe, tokenizer, cache_key, console)
    loaded = load_for_training(recipe, data.label_map, tokenizer, precision)
    console.print(describe(data.report))
    for note in data.notes:
        console.print(f"[yellow]note:[/] {note}")
    return Prepared(data, records, cached_files, cache_key, loaded)


def _trainable(recipe: Recipe, prepared: Prepared, precision: Precision, console: Console) -> Any:
    loaded = prepared.loaded
    if loaded.new_modules:
        console.print(f"new (randomly initialised, trained in full): {', '.join(loaded.new_modules)}")
    model = attach_method(recipe, loaded, precision, prepared.data)
    if recipe.train.privacy is not None:  # before the run folder: a refused layer leaves none
        from tunelab.training.privacy import check_private_model

        check_private_model(model)
    trainable, total = count_parameters(model)
    console.print(
        f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f}%) "
        f"- {recipe.method.name} on {loaded.source}"
    )
    console.print(f"precision: {describe_precision(precision)}")
    return model


def _prepare_data(
    recipe: Recipe, tokenizer: Any, cache_key: str, console: Console
) -> tuple[PreparedData, Records | None, Path | None]:
    """The data stage, or its cached result: (prepared data, records if computed, cached split files)."""
    hit = data_cache.load(data_cache.cache_dir(recipe.output.dir), cache_key)
    if hit is not None:
        prepared, files = hit
        if task_spec(recipe.task).chat_template:  # the cached tokens were rendered with its template
            prepared.chat_template, prepared.added_tokens = prepare_chat_tokenizer(
                recipe.data.template, recipe.method.name, tokenizer, tools=prepared.tools
            )
        console.print(f"data: prepared before, read from the cache ({files.parent})")
        return prepared, None, files
    records = load_records(recipe, paraphraser=paraphraser_for(recipe))
    return tokenize_records(recipe, records, tokenizer), records, None


def _write_data_folder(recipe: Recipe, target: Path, prepared: Prepared) -> None:
    """run_dir/data: exactly what is trained on, and report.json; new results also go to the cache."""
    if prepared.cached_files is not None:
        shutil.copytree(prepared.cached_files, target, dirs_exist_ok=True)
        return
    assert prepared.records is not None
    write_prepared(target, prepared.records, prepared.data)
    data_cache.save(data_cache.cache_dir(recipe.output.dir), prepared.cache_key, prepared.data, target)


def _shared_run_dir(recipe: Recipe, accelerator: Accelerator) -> Path:
    """The main process names and creates the folder; the others are told its name."""
    name = [str(create_run_dir(recipe)) if accelerator.is_main_process else None]
    broadcast_object_list(name)
    return Path(str(name[0]))


# ---------------------------------------------------------------------------------------------
# In the run folder


def _train_in_run_dir(
    recipe: Recipe,
    model: Any,
    prepared: Prepared,
    accelerator: Accelerator,
    run: RunFolder,
    resume_from: Path | None,
    console: Console,
    on_validation: ValidationCallback | None = None,
) -> None:
    data, tokenizer, summary = prepared.data, prepared.loaded.tokenizer, run.summary
    setup = build_training(recipe, model, data, tokenizer.pad_token_id, accelerator)
    summary.total_steps = setup.steps  # known from here on: progress and ETAs read it while it trains
    if setup.mixed is not None:
        summary.mix = setup.mixed.describe()
    if setup.class_weights is not None and data.label_map is not None:
        weights = ", ".join(f"{label} {setup.class_weights[i]:.3f}" for label, i in data.label_map.items())
        summary.notes.append(f"class weights (train.class_weights: auto): {weights}")
        console.print(f"[yellow]note:[/] {summary.notes[-1]}")
    run.save()
    accelerator.register_for_checkpointing(setup.scheduler, setup.state)
    if setup.privacy is not None:  # the accountant's history: a resumed run counts every step spent
        accelerator.register_for_checkpointing(setup.privacy)
    accelerator.register_save_state_pre_hook(checkpoint.keep_only_trainable_weights)
    run_eval = _evaluator(recipe, setup, prepared, accelerator)
    reference = load_reference(recipe.eval.reference) if recipe.eval.reference else None
    if reference is not None and not is_adapter(setup.model) and resume_from is None:
        # full / freeze: "before" is the base model, i.e. these weights before the first step.
        summary.forgetting_before = score_reference(
            accelerator.unwrap_model(setup.model), tokenizer, reference
        )
        run.save()  # a resumed run needs it: the base weights are gone by then
    if resume_from is not None:
        checkpoint.load_checkpoint(accelerator, resume_from)
        # Where this segment starts: an aborted segment may have recorded steps past its last checkpoint.
        run.record_progress(setup.state.step, setup.state.tokens, checkpoint=resume_from.name)
        console.print(f"resumed from {resume_from} (step {setup.state.step} of {setup.steps})")
    else:
        _score_before_training(data, run_eval, run, console)
    resumed = resume_from is not None
    fit_in_run_folder(recipe, setup, data, run, run_eval, accelerator, console, resumed, on_validation)
    metrics = _score_after_training(recipe, setup, prepared, run, run_eval, reference, accelerator, console)
    if accelerator.is_main_process:
        save_final(
            accelerator.unwrap_model(setup.model), tokenizer, run.run_dir, recipe, data, summary.precision
        )
    state = setup.state
    if setup.privacy is not None:
        summary.privacy = setup.privacy.describe()
        metrics["epsilon"] = summary.privacy["epsilon"]
        console.print(setup.privacy.spent_line())
    run.complete(
        steps=state.step,
        total_steps=setup.steps,
        tokens=state.tokens,
        stopped_early=state.stopped_early,
        metrics=metrics,
    )


def _evaluator(
    recipe: Recipe, setup: TrainingSetup, prepared: Prepared, accelerator: Accelerator
) -> SplitEvaluator:
    """The held-out passes of this run: the loss pass, and what its validation passes add."""
    hook = task_spec(recipe.task).validation_extras
    extras = hook(_context(recipe, setup.model, prepared, accelerator)) if hook is not None else None
    return SplitEvaluator(
        setup.model,
        setup.objective,
        recipe.task,
        recipe.train.batch_size,
        prepared.data,
        prepared.loaded.tokenizer.pad_token_id,
        accelerator,
        extras,
    )


def _baselines(
    recipe: Recipe, prepared: Prepared, accelerator: Accelerator, console: Console
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The task's baselines on the held-out split, before training (the base model, or none), and the
    base model's generated answers where eval.metrics asks for them."""
    hook = task_spec(recipe.task).baselines
    if hook is None:
        return {}, {}
    context = _context(recipe, prepared.loaded.model, prepared, accelerator, console)
    return hook(context)


def _context(
    recipe: Recipe, model: Any, prepared: Prepared, accelerator: Accelerator, console: Console | None = None
) -> TaskContext:
    return TaskContext(
        recipe,
        model,
        prepared.loaded.tokenizer,
        prepared.data,
        prepared.records,
        prepared.cached_files,
        accelerator,
        console or Console(quiet=True),
    )


def _score_before_training(
    data: PreparedData, run_eval: SplitEvaluator, run: RunFolder, console: Console
) -> None:
    """The same model before any training, on the split the headline after-score comes from: the test
    split, else validation (whose last pass, on the final weights, is the after-score)."""
    split = held_out_split(data)
    if split is None:
        return
    run.summary.before_training = run_eval(split)
    run.summary.before_training_split = split
    console.print(f"before training ({split}): {format_metrics(run.summary.before_training)}")
    run.save()  # kept when the process dies: a resumed run cannot redo it


def _score_after_training(
    recipe: Recipe,
    setup: TrainingSetup,
    prepared: Prepared,
    run: RunFolder,
    run_eval: SplitEvaluator,
    reference: Any,
    accelerator: Accelerator,
    console: Console,
) -> dict[str, Any]:
    """The run's metrics: the last train loss and validation pass, the test split, a classifier's
    per-class scores and the forgetting check (both also in eval.json)."""
    data, summary, model = prepared.data, run.summary, setup.model
    metrics = {"train_loss_last": last_train_loss(run.run_dir), **setup.state.last_metrics}
    if "test" in data.splits:
        metrics.update(run_eval("test"))
    if recipe.eval.metrics:
        metrics.update(_generated_answers(recipe, setup, prepared, run, accelerator, console))
    after_training = task_spec(recipe.task).after_training
    scored: dict[str, Any] = {}
    if after_training is not None:  # eval.json's parts: a classifier's report, a tagger's entities, ...
        context = _context(recipe, model, prepared, accelerator, console)
        context.baselines, context.before_training = summary.baselines, summary.before_training
        context.notes = summary.notes  # warnings (bias) go to summary.json and the report
        scored = after_training(context, metrics)
    if recipe.eval.canaries is not None:
        tokenizer = prepared.loaded.tokenizer
        scored["canaries"] = audit(
            accelerator.unwrap_model(model), tokenizer, recipe.eval.canaries, recipe.task
        )
        metrics.update(canary_metrics(scored["canaries"]))
        console.print(describe_audit(scored["canaries"]))
    if reference is not None:
        forgetting = forgetting_check(
            recipe, model, prepared.loaded.tokenizer, reference, summary.forgetting_before, accelerator
        )
        scored["forgetting"] = summary.forgetting = forgetting
        console.print(describe_forgetting(forgetting))
    if scored and accelerator.is_main_process:
        write_text_atomic(run.run_dir / "eval.json", json.dumps(scored, indent=2) + "\n")
    return metrics


def _scored_chats(prepared: Prepared) -> list[Any]:
    """The conversations of the split the headline scores come from (test, else validation)."""
    split = held_out_split(prepared.data)
    assert split is not None, "eval.metrics needs a held-out split (scored only when there is one)"
    return _chats(prepared, split)


def _chats(prepared: Prepared, split: str) -> list[Any]:
    return chat_records(prepared.records, prepared.cached_files, split, prepared.data)


def _generated_answers(
    recipe: Recipe,
    setup: TrainingSetup,
    prepared: Prepared,
    run: RunFolder,
    accelerator: Accelerator,
    console: Console,
) -> dict[str, float]:
    """eval.metrics: the fine-tuned model's answers, scored beside the base model's (generations.jsonl)."""
    split = held_out_split(prepared.data)
    if split is None:
        return {}
    path = run.run_dir / GENERATIONS_FILE
    earlier = {name: got for name, got in read_generations(path).items() if name != "fine_tuned"}
    model, tokenizer = accelerator.unwrap_model(setup.model), prepared.loaded.tokenizer
    scores, asked, answers = generative_eval(
        recipe, model, tokenizer, _scored_chats(prepared), split, run.summary.baselines, earlier, console
    )
    if accelerator.is_main_process:
        write_generations(path, asked, answers)
    return scores
