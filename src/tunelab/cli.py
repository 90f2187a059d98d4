"""The command line: parse, call the library, print. Nothing else lives here."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tunelab.errors import TunelabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune pre-trained language models on your own data, and find out whether it helped.",
)
# soft_wrap: long paths stay on one line, so the run folder can be copied from the terminal.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe field, e.g. --set train.lr=1e-4 (repeatable)."),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """User errors print as one short message and exit 1; tracebacks only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except TunelabError as exc:
            if debug:
                raise
            console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as exc:
            if debug:
                raise
            console.print(
                f"[bold red]error:[/] {type(exc).__name__}: {exc}\n"
                "This looks like a bug in tunelab; run again with --debug for the traceback.",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@friendly_errors
def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    set_: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Check a recipe and report every problem at once."""
    from tunelab.config import load_recipe

    loaded = load_recipe(recipe, set_ or [])
    out.print(f"{recipe}: ok ({loaded.task}, {loaded.method.name}, model {loaded.model.name})")


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    set_: SetOption = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue RUN_DIR from its newest complete checkpoint.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Fine-tune a model as the recipe says, leaving a complete run folder."""
    from tunelab.runner import load_and_train  # heavy imports (torch, transformers) only when needed

    result = load_and_train(str(recipe), set_ or [], resume, console)
    if result.is_main_process:
        _print_result(result.summary)


def _print_result(summary: dict[str, Any]) -> None:
    baseline, metrics = summary.get("baseline", {}), summary.get("metrics", {})
    for key, after in metrics.items():
        if key in baseline:
            out.print(f"{key}: {baseline[key]:.4f} before training -> {after:.4f} after")
        elif isinstance(after, float):
            out.print(f"{key}: {after:.4f}")
    stopped = " (stopped early)" if summary.get("stopped_early") else ""
    out.print(
        f"steps: {summary['steps']}{stopped}, tokens: {summary['tokens']:,}, time: {summary['wall_s']:.1f}s"
    )
    out.print(f"run folder: {summary['run_dir']}")


def main() -> None:
    # Quieter third-party output: their deprecation notes and loading bars are for library authors;
    # what users need to know, tunelab says itself.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)\.")
    app(prog_name="tunelab")


if __name__ == "__main__":
    main()
