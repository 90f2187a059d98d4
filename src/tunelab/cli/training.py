"""validate, train (also on several processes) and plan."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import (
    DebugOption,
    SetOption,
    app,
    console,
    friendly_errors,
    out,
)
from tunelab.errors import RunInterrupted, TunelabError
from tunelab.runs.summary import RunSummary


@app.command()
@friendly_errors
def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    set_: SetOption = None,
    host: Annotated[
        bool, typer.Option("--host", help="Also check this machine: a CUDA GPU, bitsandbytes, as needed.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Check a recipe, its data and its model's whereabouts; report every recipe problem at once."""
    from tunelab.config import check_host, load_recipe
    from tunelab.data.pipeline import load_records
    from tunelab.models.load import check_sequence_length
    from tunelab.models.source import check_model
    from tunelab.paraphrase import paraphraser_for

    loaded = load_recipe(recipe, set_ or [])
    if loaded.search is not None:  # the space against the recipe itself: every problem at once
        from tunelab.tuning.study import search_problems

        problems = search_problems(loaded)
        if problems:
            raise TunelabError(
                f"{recipe}: the search has {len(problems)} problem(s)",
                problems=problems,
                fix="correct search: (paths are recipe paths, values what those fields accept)",
            )
    if host:
        check_host(loaded)
    _, local = check_model(loaded.model)  # a missing folder, damaged weights, an uncached Hub id offline
    check_sequence_length(loaded)
    if loaded.model.adapter is not None:  # the run it starts from: finished, an adapter, the same base
        from tunelab.models.base_adapter import resolve_adapter

        resolve_adapter(loaded.model, loaded.task)
    # The data stage up to tokenisation: every file read, bad rows named, cleaned, split, leak-checked.
    report = load_records(loaded, paraphraser=paraphraser_for(loaded)).report
    counts = report["records"]
    out.print(f"{recipe}: ok ({loaded.task}, {loaded.method.name}, model {loaded.model.name})")
    for warning in report.get("warnings", []):
        out.print(f"  note: {warning}")
    shown = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    out.print(
        f"  checked: the recipe; the data ({shown} rows after cleaning, split and the leakage check); "
        f"the model {_model_checked(local)} and its positions" + ("; this machine" if host else "")
    )
    out.print(
        "  not checked here: tokenisation and the chat template, loading the weights, memory "
        "(`tunelab plan` runs those)" + ("" if host else "; this machine's GPU and libraries (--host)")
    )


def _model_checked(local: bool) -> str:
    from tunelab.models.source import hub_offline

    if local:
        return "folder (its config and weight files)"
    return "id (in the local cache)" if hub_offline() else "id (not looked up: train downloads it)"


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    set_: SetOption = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue RUN_DIR from its newest complete checkpoint.")
    ] = None,
    nproc: Annotated[
        int, typer.Option("--nproc", help="Train on N processes (DDP, or train.distributed: fsdp|deepspeed).")
    ] = 1,
    debug: DebugOption = False,
) -> None:
    """Fine-tune a model as the recipe says, leaving a complete run folder."""
    if nproc > 1 and not _launched():
        raise typer.Exit(_launch(recipe, set_ or [], resume, nproc, debug))
    from tunelab.runner import load_and_train  # heavy imports (torch, transformers) only when needed

    try:
        result = load_and_train(str(recipe), set_ or [], resume, console)
    except RunInterrupted as stopped:
        if stopped.main:
            _print_interrupted(stopped, recipe, set_ or [])
        raise typer.Exit(130) from None  # the shell's code for a Ctrl-C
    if result.is_main_process:
        _print_result(result.summary)


def _print_interrupted(stopped: RunInterrupted, recipe: Path, overrides: list[str]) -> None:
    """What was kept, and the exact command that continues the run."""
    if stopped.checkpoint is None:
        console.print(
            f"[bold red]interrupted[/] at step {stopped.step}, before any checkpoint: "
            f"nothing to resume ({stopped.run_dir} is recorded as interrupted); train again"
        )
        return
    from tunelab.training.checkpoint import checkpoint_name

    if stopped.graceful or stopped.checkpoint == checkpoint_name(stopped.step):  # no step is lost
        console.print(
            f"[bold yellow]stopped[/] after step {stopped.step}; checkpoint {stopped.checkpoint} saved"
        )
    else:
        console.print(
            f"[bold red]interrupted[/] at step {stopped.step}; the newest checkpoint is "
            f"{stopped.checkpoint} (the steps after it are lost)"
        )
    console.print(f"resume with:\n  {resume_command(recipe, overrides, stopped.run_dir)}")


def resume_command(recipe: Path, overrides: list[str], run_dir: Path) -> str:
    """`tunelab train` as it was run, plus --resume: the same recipe, the same --set overrides (resume
    refuses a recipe that differs) and, under a launcher, the same number of processes."""
    args = ["tunelab", "train", str(recipe), *(a for o in overrides for a in ("--set", o))]
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    if processes > 1:
        args += ["--nproc", str(processes)]
    return shlex.join([*args, "--resume", str(run_dir)])


def _launched() -> bool:
    from tunelab.launch import under_launcher

    return under_launcher()


def _launch(recipe: Path, overrides: list[str], resume: Path | None, nproc: int, debug: bool) -> int:
    """Validate once here (errors before any process starts), then hand over to the launcher."""
    from tunelab import launch
    from tunelab.config import load_recipe

    loaded = load_recipe(recipe, overrides)
    launch.check_can_launch(nproc, loaded.train.distributed)
    command = launch.launch_command(
        recipe, nproc, loaded.train.distributed, loaded.train.deepspeed_stage, overrides, resume, debug
    )
    console.print(f"launching {nproc} processes ({loaded.train.distributed}): {' '.join(command[1:6])} ...")
    return launch.run(command, nproc)


@app.command()
@friendly_errors
def plan(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory", help="Memory to fit in, e.g. 24GB (default: the GPU's memory, or the RAM on CPU)."
        ),
    ] = None,
    probe_steps: Annotated[
        int,
        typer.Option(
            "--probe-steps", min=0, help="Optimizer steps to run and time after two warm-up steps (0: none)."
        ),
    ] = 3,
    set_: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Estimate a recipe's peak memory and time per epoch before training; say whether it fits."""
    from tunelab.config import load_recipe
    from tunelab.plan import parse_memory, render
    from tunelab.plan import plan as make_plan

    budget = parse_memory(memory) if memory is not None else None  # a bad size fails before any loading
    result = make_plan(load_recipe(recipe, set_ or []), budget, probe_steps)
    render(result, out)
    if not result.fits:  # scripts (and `tunelab tune`) read the verdict from the exit status
        raise typer.Exit(PLAN_DOES_NOT_FIT)


PLAN_DOES_NOT_FIT = 3  # 1 is a bad input; 3 says the recipe was planned and does not fit


def _print_result(summary: RunSummary) -> None:
    baseline, metrics, others = summary.before_training, summary.metrics, summary.baselines
    for key, after in metrics.items():
        if key in baseline:
            out.print(f"{key}: {baseline[key]:.4f} before training -> {after:.4f} after")
        elif isinstance(after, float):
            out.print(f"{key}: {after:.4f}")
        for name, scores in others.items():
            if key in scores and isinstance(after, float):
                change = after - scores[key]
                about = scores.get("about", "base model")
                out.print(
                    f"  vs {name.replace('_', '-')} baseline ({about}): {scores[key]:.4f} ({change:+.4f})"
                )
                if scores.get("note"):
                    out.print(f"    note: {scores['note']}")
    stopped = " (stopped early)" if summary.stopped_early else ""
    out.print(f"steps: {summary.steps}{stopped}, tokens: {summary.tokens:,}, time: {summary.wall_s:.1f}s")
    out.print(f"run folder: {summary.run_dir}")
    if summary.report:
        out.print(f"report: {summary.report}")
