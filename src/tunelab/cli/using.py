"""Using a result: export, generate, chat and predict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import (
    ColumnOption,
    DebugOption,
    MaxNewTokens,
    ModelArgument,
    PrecisionOption,
    SystemOption,
    TemperatureOption,
    TextColumnOption,
    app,
    console,
    friendly_errors,
    key_value,
    out,
    write_now,
)


@app.command("export")
@friendly_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="A run folder or its final/ folder.")],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The folder to write (must not exist, or be empty). Always a folder: a name like "
            "model.gguf or model.safetensors is refused (no single-file export yet).",
        ),
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
    if exported_weights(written) == "adapter":
        from tunelab.serving.vllm import vllm_command, vllm_problems

        refused = vllm_problems(written)
        if refused:
            out.print("not servable by vLLM as an adapter: " + "; ".join(refused))
        else:
            out.print(f"serve it with vLLM (GPU): {vllm_command(written, written.name)}")


@app.command("generate")
@friendly_errors
def generate_command(
    run: ModelArgument,
    prompt: Annotated[str, typer.Option("--prompt", help="The user message to answer.")],
    max_new_tokens: MaxNewTokens = 128,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.0,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Answer one prompt with a trained model (rendered with the run's chat template), or with a base
    model (its own template), to compare the two."""
    from tunelab.inference import generate_text, to_best_device
    from tunelab.models.restore import load_run_or_base

    trained = to_best_device(load_run_or_base(run, precision=precision))
    answer = generate_text(
        trained, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature
    )
    typer.echo(answer)  # not rich: model text is printed as is, brackets and all


@app.command("chat")
@friendly_errors
def chat_command(
    run: ModelArgument,
    max_new_tokens: MaxNewTokens = 256,
    system: SystemOption = None,
    temperature: TemperatureOption = 0.0,
    precision: PrecisionOption = "trained",
    tools: Annotated[
        Path | None,
        typer.Option(
            "--tools",
            help="A JSON file of functions the model may call (OpenAI's tools list); /result answers a call.",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Chat with a trained model; answers stream as they are generated. /help lists the commands;
    Ctrl-C stops an answer and keeps the chat; /exit or Ctrl-D quits."""
    from tunelab.chat import chat_loop, read_tools_file
    from tunelab.inference import to_best_device
    from tunelab.models.restore import load_run_or_base

    functions = read_tools_file(tools) if tools is not None else None
    trained = to_best_device(load_run_or_base(run, precision=precision))
    console.print(
        f"chatting with {trained.final_dir} - /help lists the commands; Ctrl-C stops an answer, "
        "/exit or Ctrl-D quits"
    )
    chat_loop(
        trained,
        input,
        write_now,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        tools=functions,
    )


@app.command("predict")
@friendly_errors
def predict_command(
    run: ModelArgument,
    data: Annotated[Path, typer.Option("--data", help="Rows to predict (.jsonl, .json, .csv, ...).")],
    out_file: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Where to write the predictions; its suffix picks the format: .csv, .tsv, .jsonl, .json.",
        ),
    ],
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 16,
    max_new_tokens: MaxNewTokens = 128,
    column: ColumnOption = None,
    text_column: TextColumnOption = None,
    keep: Annotated[
        str | None,
        typer.Option(
            "--keep", help="Input columns to carry into the output, e.g. id,text (default: all of them)."
        ),
    ] = None,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Predict every row of a file: label and probabilities (classifiers) or the answer (generators),
    in columns named pred_* beside the row's own. Rows are read with the run's column mapping unless
    told otherwise."""
    from tunelab.errors import TunelabError
    from tunelab.evaluation.settings import DataSettings
    from tunelab.inference import output_format, predict_file, to_best_device
    from tunelab.models.restore import load_run_or_base

    output_format(out_file)  # an unknown suffix is refused before the model loads
    kept = [name.strip() for name in keep.split(",")] if keep is not None else None
    if kept is not None and not all(kept):
        raise TunelabError(
            f"--keep {keep!r}: an empty column name", fix="name the columns, e.g. --keep id,text"
        )
    trained = to_best_device(load_run_or_base(run, precision=precision))
    rename = dict(key_value(item) for item in column or [])
    columns = DataSettings.of_run(trained.recipe_dir).overridden(rename=rename, text=text_column).columns
    rows = predict_file(
        trained,
        data,
        out_file,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        columns=columns,
        keep=kept,
    )
    out.print(f"{rows} prediction(s) written to {out_file}")
