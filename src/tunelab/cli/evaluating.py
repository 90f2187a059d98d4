"""`tunelab eval`: score a run, a final/ folder or a base model on a data file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli.common import (
    ColumnOption,
    DebugOption,
    MaxNewTokens,
    PrecisionOption,
    TextColumnOption,
    app,
    friendly_errors,
    key_value,
    out,
)
from tunelab.errors import TunelabError

LabelColumnOption = Annotated[
    str | None, typer.Option(help="Column holding the label (classify); default: the run's.")
]
MaxSeqLenOption = Annotated[
    int | None, typer.Option(help="Tokens per example; default: the run's train.max_seq_len (else 512).")
]
ReferencesOption = Annotated[
    str,
    typer.Option(
        help="Columns of reference answers, comma-separated (multi-reference ROUGE, BLEU, ...); "
        "default: the row's own answer."
    ),
]


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
    column: ColumnOption = None,
    text_column: TextColumnOption = None,
    label_column: LabelColumnOption = None,
    max_seq_len: MaxSeqLenOption = None,
    max_new_tokens: MaxNewTokens = 128,
    references: ReferencesOption = "",
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to write eval.json.")] = None,
    precision: PrecisionOption = "trained",
    debug: DebugOption = False,
) -> None:
    """Score a model on a data file; writes eval.json (into the run folder when TARGET is a run)."""
    from tunelab.evaluation.generative import GENERATIVE
    from tunelab.evaluation.settings import DataSettings
    from tunelab.evaluation.target import evaluate_file, load_target

    wanted = tuple(name.strip() for name in metrics.split(",") if name.strip())
    unknown = [name for name in wanted if name not in GENERATIVE]
    if unknown:
        raise TunelabError(
            f"--metrics: unknown {', '.join(unknown)}", fix=f"choose from {', '.join(GENERATIVE)}"
        )
    loaded = load_target(target, task, precision=precision)
    # The run's own data settings, each overridable: scoring a run reads its files as training did.
    settings = DataSettings.of_run(loaded.recipe_dir).overridden(
        format=data_format,
        rename=dict(key_value(item) for item in column or []),
        text=text_column,
        label=label_column,
        max_seq_len=max_seq_len,
        references=tuple(name.strip() for name in references.split(",") if name.strip()),
    )
    result = evaluate_file(
        loaded, str(data), metrics=wanted, settings=settings, max_new_tokens=max_new_tokens
    )
    path = out_file or ((loaded.run_dir / f"eval-{data.stem}.json") if loaded.run_dir else Path("eval.json"))
    _report(result, path)


def _report(result: dict[str, Any], path: Path) -> None:
    """The scores on the terminal, and all of the result in `path`; generated answers beside it, one
    JSON line each (<name>.generations.jsonl), to read what the scores summarise."""
    import json

    generations = result.pop("generations", None)
    for key, value in result["metrics"].items():
        out.print(f"{key}: {value:.4f}")
    if "classification" in result:
        macro = result["classification"]["macro"]
        out.print(
            f"macro precision {macro['precision']:.4f}, recall {macro['recall']:.4f}, f1 {macro['f1']:.4f}"
        )
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.print(f"written to {path}")
    if generations:
        answers = path.with_suffix(".generations.jsonl")
        lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in generations)
        answers.write_text("".join(lines), encoding="utf-8")
        out.print(f"answers written to {answers}")
