"""What every command shares: the Typer app, the consoles, the common options and friendly errors."""

from __future__ import annotations

import functools
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
        except typer.Exit:
            raise  # a deliberate exit code (a launcher's), not an error
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


RunArgument = Annotated[
    Path, typer.Argument(help="A run folder, its final/ folder, or a `tunelab export` folder.")
]
ModelArgument = Annotated[
    str,
    typer.Argument(
        help="A run folder, its final/ folder, a `tunelab export` folder, or a base model (a folder, a "
        ".gguf file or a Hub id), to compare before with after."
    ),
]
MaxNewTokens = Annotated[int, typer.Option(help="Most tokens generated per answer.")]
SystemOption = Annotated[
    str | None, typer.Option("--system", help="A system message before the conversation.")
]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy (deterministic).")]
# How a data file is read, for eval and predict: the run's own settings unless these say otherwise.
ColumnOption = Annotated[
    list[str] | None,
    typer.Option("--column", help="Rename a source column: FIELD=COLUMN (repeatable); default: the run's."),
]
TextColumnOption = Annotated[
    str | None, typer.Option(help="Column holding the text (classifiers); default: the run's.")
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="trained (the precision the run trained in, from final/tunelab.json), fp32, bf16 or fp16.",
    ),
]


def write_now(text: str) -> None:
    typer.echo(text, nl=False)  # echo flushes: a streamed answer appears token by token


def key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise TunelabError(f"--column {item!r}: expected FIELD=COLUMN, e.g. --column prompt=dialogue")
    return key.strip(), value.strip()
