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
    from tunelab.models.load import check_sequence_length, model_source

    loaded = load_recipe(recipe, set_ or [])
    if host:
        check_host(loaded)
    _, local = model_source(loaded.model.name)  # a missing folder fails here, as train would
    check_sequence_length(loaded)
    # The data stage up to tokenisation: every file read, bad rows named, cleaned, split, leak-checked.
    counts = load_records(loaded).report["records"]
    out.print(f"{recipe}: ok ({loaded.task}, {loaded.method.name}, model {loaded.model.name})")
    shown = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    out.print(
        f"  checked: the recipe; the data ({shown} rows after cleaning, split and the leakage check); "
        f"the model {'folder' if local else 'id'} and its positions" + ("; this machine" if host else "")
    )
    out.print(
        "  not checked here: tokenisation and the chat template, loading the weights, memory "
        "(`tunelab plan` runs those)" + ("" if host else "; this machine's GPU and libraries (--host)")
    )


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

    result = load_and_train(str(recipe), set_ or [], resume, console)
    if result.is_main_process:
        _print_result(result.summary)


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


data_app = typer.Typer(no_args_is_help=True, help="Look at data and prepare it, before training.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
@friendly_errors
def data_inspect(
    file: Annotated[
        Path, typer.Argument(help="A data file (.jsonl, .json, .csv, .tsv, .parquet, .txt; .gz too).")
    ],
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Model (folder or Hub id) whose tokenizer counts tokens."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="Input format; auto detects it.")] = "auto",
    column: Annotated[
        list[str] | None, typer.Option("--column", help="Rename a source column: FIELD=COLUMN (repeatable).")
    ] = None,
    text_column: Annotated[str, typer.Option(help="Column holding the text (labeled/text).")] = "text",
    label_column: Annotated[str, typer.Option(help="Column holding the label (labeled).")] = "label",
    max_seq_len: Annotated[int, typer.Option(help="Count examples longer than this many tokens.")] = 512,
    debug: DebugOption = False,
) -> None:
    """Summarise a data file: format, bad rows, lengths, duplicates, PII, labels."""
    import json

    from tunelab.config import ModelConfig
    from tunelab.data.formats import Columns
    from tunelab.data.inspect import inspect_file, render_summary
    from tunelab.models.load import load_tokenizer

    rename = dict(_key_value(item) for item in column or [])
    columns = Columns(text=text_column, label=label_column, rename=rename)
    tok = load_tokenizer(ModelConfig(name=tokenizer)) if tokenizer else None
    summary = inspect_file(file, fmt=fmt, columns=columns, tokenizer=tok, max_seq_len=max_seq_len)
    for line in render_summary(summary):
        out.print(line)
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        out.print(f"summary written to {json_out}")


@data_app.command("prepare")
@friendly_errors
def data_prepare(
    recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for the cleaned splits (default: runs/<name>-data).")
    ] = None,
    set_: SetOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the whole data stage; write the cleaned splits (what training sees) and report.json."""
    from tunelab.config import load_recipe
    from tunelab.data.pipeline import load_records, tokenize_records, write_prepared
    from tunelab.models.load import load_tokenizer

    loaded = load_recipe(recipe, set_ or [])
    records = load_records(loaded)
    prepared = tokenize_records(loaded, records, load_tokenizer(loaded.model))
    target = out_dir or Path(loaded.output.dir) / f"{loaded.name}-data"
    written = write_prepared(target, records, prepared)
    for note in prepared.notes:
        console.print(f"note: {note}")
    # The counts of what was written (after tokenisation dropped what it had to), not of what went in.
    counts = ", ".join(f"{split} {n:,}" for split, n in written.items())
    left_out = sum(len(records.splits[split]) - n for split, n in written.items())
    out.print(
        f"records: {counts}"
        + (f" ({left_out:,} left out at tokenisation, see the notes)" if left_out else "")
    )
    out.print(f"written to {target} (train.jsonl, ..., report.json)")


runs_app = typer.Typer(no_args_is_help=True, help="The run registry: list, show and compare runs.")
app.add_typer(runs_app, name="runs")
RunsDir = Annotated[Path, typer.Option("--dir", help="The output.dir whose registry to read.")]


@runs_app.command("list")
@friendly_errors
def runs_list(
    runs_dir: RunsDir = Path("runs"),
    limit: Annotated[int, typer.Option(help="Show at most this many, newest first.")] = 20,
    debug: DebugOption = False,
) -> None:
    """Runs, newest first, with status, cost and the main metric."""
    from tunelab.runs.registry import format_table, list_runs

    rows = []
    for run in list_runs(runs_dir, limit=limit):
        metrics = run.get("metrics") or {}
        main = next(
            (k for k in ("test_accuracy", "val_accuracy", "test_loss", "val_loss") if k in metrics), None
        )
        rows.append({**run, "metric": f"{main} {metrics[main]:.4f}" if main else "-"})
    columns = ("run_id", "status", "task", "method", "steps", "wall_s", "metric")
    for line in format_table(rows, columns) if rows else [f"no runs recorded in {runs_dir}"]:
        out.print(line)


@runs_app.command("show")
@friendly_errors
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix of one.")],
    runs_dir: RunsDir = Path("runs"),
    debug: DebugOption = False,
) -> None:
    """Everything the registry holds about one run."""
    import json

    from tunelab.runs.registry import get_run

    run = get_run(runs_dir, run_id)
    run.pop("recipe_yaml", None)
    out.print(json.dumps(run, indent=2))


@runs_app.command("compare")
@friendly_errors
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (or unique prefixes).")],
    runs_dir: RunsDir = Path("runs"),
    debug: DebugOption = False,
) -> None:
    """Metrics side by side, and the recipe fields that differ."""
    from tunelab.runs.registry import compare_runs, format_table

    result = compare_runs(runs_dir, run_ids)
    ids = result["runs"]
    metric_rows = [
        {"metric": name, **dict(zip(ids, values, strict=True))} for name, values in result["metrics"].items()
    ]
    diff_rows = [
        {"recipe field": name, **dict(zip(ids, values, strict=True))}
        for name, values in result["recipe_differences"].items()
    ]
    for line in format_table(metric_rows, ["metric", *ids]):
        out.print(line)
    out.print("")
    if diff_rows:
        for line in format_table(diff_rows, ["recipe field", *ids]):
            out.print(line)
    else:
        out.print("the recipes are the same")


@app.command("eval")
@friendly_errors
def eval_command(
    target: Annotated[
        str, typer.Argument(help="A run folder, its final/ folder, or a base model (folder or Hub id).")
    ],
    data: Annotated[Path, typer.Option("--data", help="The data file to score.")],
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics", help="sft: generative metrics, comma-separated: bleu,chrf,rouge,exact_match."
        ),
    ] = "",
    task: Annotated[str | None, typer.Option(help="Task of a base model (sft).")] = None,
    data_format: Annotated[
        str | None, typer.Option("--format", help="The file's format; default: the run's data.format.")
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="Rename a source column: FIELD=COLUMN (repeatable); default: the run's."
        ),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="Column holding the text (classify); default: the run's.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Column holding the label (classify); default: the run's.")
    ] = None,
    max_seq_len: Annotated[
        int | None, typer.Option(help="Tokens per example; default: the run's train.max_seq_len (else 512).")
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens generated per answer (generative metrics).")
    ] = 128,
    references: Annotated[
        str,
        typer.Option(
            help="Columns of reference answers, comma-separated (multi-reference ROUGE, BLEU, ...); "
            "default: the row's own answer."
        ),
    ] = "",
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to write eval.json.")] = None,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Score a model on a data file; writes eval.json (into the run folder when TARGET is a run)."""
    import json
    from dataclasses import replace

    from tunelab.evaluation.target import GENERATIVE, DataSettings, evaluate_file, load_target

    wanted = tuple(name.strip() for name in metrics.split(",") if name.strip())
    unknown = [name for name in wanted if name not in GENERATIVE]
    if unknown:
        raise TunelabError(
            f"--metrics: unknown {', '.join(unknown)}", fix=f"choose from {', '.join(GENERATIVE)}"
        )
    loaded = load_target(target, task, precision=precision)
    # The run's own data settings, each overridable: scoring a run reads its files as training did.
    run = DataSettings.of_run(loaded.run_dir)
    columns = replace(
        run.columns,
        text=text_column or run.columns.text,
        label=label_column or run.columns.label,
        rename={**run.columns.rename, **dict(_key_value(item) for item in column or [])},
    )
    settings = DataSettings(
        format=data_format or run.format,
        columns=columns,
        max_seq_len=max_seq_len or run.max_seq_len,
        references=tuple(name.strip() for name in references.split(",") if name.strip()),
    )
    result = evaluate_file(
        loaded, str(data), metrics=wanted, settings=settings, max_new_tokens=max_new_tokens
    )
    for key, value in result["metrics"].items():
        out.print(f"{key}: {value:.4f}")
    if "classification" in result:
        macro = result["classification"]["macro"]
        out.print(
            f"macro precision {macro['precision']:.4f}, recall {macro['recall']:.4f}, f1 {macro['f1']:.4f}"
        )
    path = out_file or ((loaded.run_dir / f"eval-{data.stem}.json") if loaded.run_dir else Path("eval.json"))
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.print(f"written to {path}")


@app.command()
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    debug: DebugOption = False,
) -> None:
    """Write RUN_DIR/report.html: curves, baselines, data report and cost, in one self-contained page."""
    from tunelab.runs.report import write_report

    out.print(f"report: {write_report(run_dir)}")


RunArgument = Annotated[
    Path, typer.Argument(help="A run folder, its final/ folder, or a `tunelab export` folder.")
]
MaxNewTokens = Annotated[int, typer.Option(help="Most tokens generated per answer.")]
SystemOption = Annotated[
    str | None, typer.Option("--system", help="A system message before the conversation.")
]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy (deterministic).")]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="trained (the precision the run trained in, from final/tunelab.json), fp32, bf16 or fp16.",
    ),
]


@app.command("export")
@friendly_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="A run folder or its final/ folder.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="The folder to write (must not exist, or be empty).")
    ],
    merge: Annotated[
        bool,
        typer.Option(
            "--merge", help="Fold a LoRA/DoRA/IA3 adapter into the base: plain transformers weights."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out folder.")] = False,
    debug: DebugOption = False,
) -> None:
    """Export a run: weights (merged or adapter), tokenizer with its chat template, model card."""
    from tunelab.export import export_run, exported_weights

    written = export_run(run, out_dir, merge=merge, force=force)
    what = {"merged": "merged weights", "adapter": "adapter only", "full": "full weights"}
    out.print(f"exported ({what[exported_weights(written)]}) to {written}")


@app.command("generate")
@friendly_errors
def generate_command(
    run: RunArgument,
    prompt: Annotated[str, typer.Option("--prompt", help="The user message to answer.")],
    max_new_tokens: MaxNewTokens = 128,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.0,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Answer one prompt with a trained model (rendered with the run's chat template)."""
    from tunelab.inference import generate_text, to_best_device
    from tunelab.models.restore import load_trained

    trained = to_best_device(load_trained(run, precision=precision))
    answer = generate_text(
        trained, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature
    )
    typer.echo(answer)  # not rich: model text is printed as is, brackets and all


@app.command("chat")
@friendly_errors
def chat_command(
    run: RunArgument,
    max_new_tokens: MaxNewTokens = 256,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.0,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Chat with a trained model; answers stream as they are generated. /reset clears, /exit quits."""
    from tunelab.inference import chat_loop, to_best_device
    from tunelab.models.restore import load_trained

    trained = to_best_device(load_trained(run, precision=precision))
    console.print(f"chatting with {trained.final_dir} - /reset clears the history, /exit (or Ctrl-D) quits")
    chat_loop(
        trained, input, _write_now, system=system, max_new_tokens=max_new_tokens, temperature=temperature
    )


@app.command("predict")
@friendly_errors
def predict_command(
    run: RunArgument,
    data: Annotated[Path, typer.Option("--data", help="Rows to predict (.jsonl, .json, .csv, ...).")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the predictions (JSON lines).")],
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 16,
    max_new_tokens: MaxNewTokens = 128,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", help="Rename a source column: FIELD=COLUMN (repeatable); default: the run's."
        ),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="Column holding the text (classifiers); default: the run's.")
    ] = None,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Predict every row of a file: label and probabilities (classifiers) or the answer (generators).
    Rows are read with the run's column mapping unless told otherwise."""
    from dataclasses import replace

    from tunelab.evaluation.settings import DataSettings
    from tunelab.inference import predict_file, to_best_device
    from tunelab.models.restore import load_trained

    trained = to_best_device(load_trained(run, precision=precision))
    columns = DataSettings.of_run(trained.run_dir).columns
    columns = replace(
        columns,
        text=text_column or columns.text,
        rename={**columns.rename, **dict(_key_value(item) for item in column or [])},
    )
    rows = predict_file(
        trained, data, out_file, batch_size=batch_size, max_new_tokens=max_new_tokens, columns=columns
    )
    out.print(f"{rows} prediction(s) written to {out_file}")


def _write_now(text: str) -> None:
    typer.echo(text, nl=False)  # echo flushes: a streamed answer appears token by token


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise TunelabError(f"--column {item!r}: expected FIELD=COLUMN, e.g. --column prompt=dialogue")
    return key.strip(), value.strip()


def _print_result(summary: dict[str, Any]) -> None:
    baseline, metrics = summary.get("baseline", {}), summary.get("metrics", {})
    others = summary.get("baselines", {})
    for key, after in metrics.items():
        if key in baseline:
            out.print(f"{key}: {baseline[key]:.4f} before training -> {after:.4f} after")
        elif isinstance(after, float):
            out.print(f"{key}: {after:.4f}")
        for name, scores in others.items():
            if key in scores and isinstance(after, float):
                change = after - scores[key]
                out.print(
                    f"  vs {name.replace('_', '-')} baseline (base model): {scores[key]:.4f} ({change:+.4f})"
                )
                if scores.get("note"):
                    out.print(f"    note: {scores['note']}")
    stopped = " (stopped early)" if summary.get("stopped_early") else ""
    out.print(
        f"steps: {summary['steps']}{stopped}, tokens: {summary['tokens']:,}, time: {summary['wall_s']:.1f}s"
    )
    out.print(f"run folder: {summary['run_dir']}")
    if summary.get("report"):
        out.print(f"report: {summary['report']}")


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
