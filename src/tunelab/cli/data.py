"""`tunelab data`: look at data and prepare it, before training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import (
    DebugOption,
    SetOption,
    app,
    console,
    friendly_errors,
    key_value,
    out,
)

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
    from tunelab.data.fields import Columns
    from tunelab.data.inspect import inspect_file, render_summary
    from tunelab.models.load import load_tokenizer

    rename = dict(key_value(item) for item in column or [])
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
    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.data.written import write_prepared
    from tunelab.models.load import load_tokenizer
    from tunelab.paraphrase import paraphraser_for

    loaded = load_recipe(recipe, set_ or [])
    records = load_records(loaded, paraphraser=paraphraser_for(loaded))
    prepared = tokenize_records(loaded, records, load_tokenizer(loaded.model, loaded.task))
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
