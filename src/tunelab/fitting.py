"""The loop in its run folder: the metrics log and trackers, the progress bar, validation passes, and
checkpoints recorded in summary.json as they are written; Ctrl-C and SIGTERM checkpoint and stop it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.config import Recipe
from tunelab.data.pipeline import PreparedData
from tunelab.evaluation.passes import SplitEvaluator
from tunelab.files import CHECKPOINTS_DIR
from tunelab.runs.lifecycle import RunFolder
from tunelab.runs.rundir import MetricsLog
from tunelab.runs.trackers import open_trackers
from tunelab.training import checkpoint
from tunelab.training.loop import Hooks, fit
from tunelab.training.setup import TrainingSetup
from tunelab.training.stopping import stop_on_signals

ValidationCallback = Callable[[int, dict[str, float]], None]


def fit_in_run_folder(
    recipe: Recipe,
    setup: TrainingSetup,
    data: PreparedData,
    run: RunFolder,
    run_eval: SplitEvaluator,
    accelerator: Accelerator,
    console: Console,
    resumed: bool,
    on_validation: ValidationCallback | None = None,
) -> None:
    """The loop, with its metrics log, progress bar, evaluations and recorded checkpoints; a signal (Ctrl-C,
    SIGTERM) checkpoints and stops it (training/stopping.py)."""
    main = accelerator.is_main_process
    trackers = open_trackers(recipe, run.run_dir, resumed) if main else []
    log = MetricsLog(
        run.run_dir,
        enabled=main,
        resume_step=setup.state.step if resumed else None,
        tensorboard="tensorboard" in recipe.output.trackers,
        trackers=trackers,
    )
    progress = _progress_bar(console, main)
    evaluate = (lambda: run_eval("validation")) if "validation" in data.splits else None
    hooks = _hooks(recipe, setup, run, accelerator, log, progress, evaluate)
    if on_validation is not None:
        hooks.after_validation = on_validation
    try:
        with progress, stop_on_signals(launched=accelerator.num_processes > 1, announce=main) as stop:
            hooks.stop_requested = _agreed(stop, accelerator)
            _loop(recipe, setup, accelerator, hooks)
    except BaseException as exc:  # a pruned, interrupted or failed run closes its trackers too, as such
        log.close(error=exc)
        raise
    log.close()


def _hooks(
    recipe: Recipe,
    setup: TrainingSetup,
    run: RunFolder,
    accelerator: Accelerator,
    log: MetricsLog,
    progress: Progress,
    evaluate: Callable[[], dict[str, float]] | None,
) -> Hooks:
    """What the loop reports to the run folder, the metrics log and the progress bar."""
    state = setup.state
    bar = progress.add_task("train", total=setup.steps, completed=state.step, loss=float("nan"), tps=0.0)

    def save_checkpoint(step: int) -> Path:
        root = run.run_dir / CHECKPOINTS_DIR
        path = checkpoint.save_checkpoint(accelerator, root, step, recipe.train.keep_last)
        run.record_progress(state.step, state.tokens, checkpoint=path.name)
        return path

    def show_progress(step: int, loss: float, tokens_per_s: float) -> None:
        run.record_progress(step, state.tokens)  # the live counts, written at the next checkpoint or stop
        progress.update(bar, completed=step, loss=loss, tps=tokens_per_s)

    def log_step(step: int, values: dict[str, float]) -> None:
        if setup.privacy is not None and "loss" in values:
            values["epsilon"] = setup.privacy.epsilon()
        log.log(step, values)

    return Hooks(evaluate=evaluate, save_checkpoint=save_checkpoint, log=log_step, progress=show_progress)


def _loop(recipe: Recipe, setup: TrainingSetup, accelerator: Accelerator, hooks: Hooks) -> None:
    accumulate = setup.privacy.accumulate if setup.privacy else None  # DP clips each example
    fit(
        setup.model,
        setup.optimizer,
        setup.scheduler,
        setup.objective,
        setup.batches,
        recipe.train,
        setup.steps,
        setup.state,
        accelerator,
        hooks,
        accumulate,
    )


def _agreed(flag: Callable[[], bool], accelerator: Accelerator) -> Callable[[], bool]:
    """Under DDP every rank must stop at the same step (a checkpoint is collective), but a signal reaches
    them at different moments: each step they agree, stopping when any rank was asked."""
    if accelerator.num_processes == 1:
        return flag

    def any_rank() -> bool:
        asked = torch.tensor([1.0 if flag() else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(asked, "sum").item() > 0)

    return any_rank


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
