"""sample (answers to rate), feedback export (ratings as preference data) and compare-models (win-rate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import (
    DebugOption,
    MaxNewTokens,
    TemperatureOption,
    app,
    console,
    friendly_errors,
    out,
)

feedback_app = typer.Typer(no_args_is_help=True, help="Ratings of sampled answers: export them for training.")
app.add_typer(feedback_app, name="feedback")

PromptsOption = Annotated[
    Path,
    typer.Option(
        "--prompts",
        help='JSONL rows with "prompt" (text or messages) or "messages" (a final answer is left out).',
    ),
]
DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The feedback database (default: registry.sqlite of the runs folder holding RUN)."
    ),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seeds the sampling (sample k uses seed + k).")]


@app.command("sample")
@friendly_errors
def sample_command(
    run: Annotated[str, typer.Argument(help="A run folder (or its final/, or an export) to sample from.")],
    prompts: PromptsOption,
    n: Annotated[int, typer.Option("--n", help="Answers per prompt and model.")] = 2,
    against: Annotated[
        str | None,
        typer.Option(
            "--against", help="Also sample `base` (the run's base model) or another run, to pair with."
        ),
    ] = None,
    temperature: TemperatureOption = 0.8,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling: the smallest top set of this mass.")
    ] = 0.95,
    max_new_tokens: MaxNewTokens = 128,
    seed: SeedOption = 0,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    db: DbOption = None,
    debug: DebugOption = False,
) -> None:
    """Generate answers to rate: n per prompt from RUN (and from --against), stored and paired blind."""
    from tunelab.feedback.sample import Settings, sample

    settings = Settings(n, temperature, top_p, max_new_tokens, seed, batch_size)
    done = sample(run, prompts, against=against, settings=settings, database=db)
    skipped = f" ({done.duplicate_prompts} repeated prompt rows left out)" if done.duplicate_prompts else ""
    console.print(
        f"stored {done.samples} answers to {done.prompts} prompts{skipped} from {', '.join(done.models)} "
        f"(n={n}, temperature {temperature}, top_p {top_p}, seed {seed}) and {done.pairs} pairs to rate"
    )
    out.print(str(done.database))


@feedback_app.command("export")
@friendly_errors
def export_command(
    output: Annotated[Path, typer.Option("-o", "--output", help="The JSONL file to write.")],
    fmt: Annotated[str, typer.Option("--format", help="trl, openai (DPO) or kto rows.")] = "trl",
    db: Annotated[
        Path | None, typer.Option("--db", help="The feedback database (default: runs/registry.sqlite).")
    ] = None,
    held_out: Annotated[
        Path | None,
        typer.Option("--held-out", help="Prompts (as --prompts) the exported prompts must not overlap."),
    ] = None,
    leakage: Annotated[
        str, typer.Option(help="Pairs whose prompt overlaps --held-out: drop or fail.")
    ] = "drop",
    screen: Annotated[
        str, typer.Option(help="Content screen (profanity scorer): report, drop flagged pairs, or off.")
    ] = "report",
    screen_threshold: Annotated[
        float, typer.Option(help="Content screen: flagged at this score or above.")
    ] = 0.5,
    debug: DebugOption = False,
) -> None:
    """Write the ratings as preference data; every rating and pair left out is counted, with why."""
    from tunelab.feedback.export import export_feedback
    from tunelab.runs.registry import registry_path

    database = db or registry_path("runs")  # recipes' default output.dir
    report = export_feedback(
        database,
        fmt,
        output,
        held_out=held_out,
        leakage=leakage,
        screen=screen,
        screen_threshold=screen_threshold,
    )
    for line in export_lines(report):
        console.print(line)
    out.print(str(output))


def export_lines(report: dict) -> list[str]:
    """What an export did, in words: rows written, each rating's fate, each gate's drops, warnings."""
    fate = report["ratings_by_fate"]
    why = {
        "overruled": "outvoted by the pair's majority (pair kept)",
        "conflicting": "raters disagree, no majority: pair left out",
        "tie": "tie: no preferred answer",
        "both_bad": "both bad: no preferred answer (kto keeps them as negatives)",
    }
    lines = [
        f"wrote {report['rows']} {report['format']} rows from {report['pairs']} pairs "
        f"({fate.get('used', 0)} of {report['ratings']} ratings used)"
    ]
    lines += [f"  {n} rating(s) not used: {why[k]}" for k, n in fate.items() if k in why and n]
    lines += [
        f"  {n} pair(s) dropped: {k.replace('_', ' ')}" for k, n in report["dropped_pairs"].items() if n
    ]
    share = report["length"].get("chosen_longer_share")
    if share is not None:
        lines.append(f"  chosen answer longer in {share:.0%} of {report['length']['pairs']} pairs")
    lines += [f"[yellow]warning:[/] {w}" for w in report["warnings"]]
    return lines


@app.command("compare-models")
@friendly_errors
def compare_models_command(
    a: Annotated[str, typer.Argument(help="Model A: a run folder, export or base model.")],
    b: Annotated[str, typer.Argument(help="Model B: a run, export, base model, or `base` (A's base).")],
    prompts: PromptsOption,
    db: DbOption = None,
    reward: Annotated[
        Path | None, typer.Option("--reward", help="A reward model run, the judge when there are no ratings.")
    ] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples of the prompts.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the bootstrap.")] = 0,
    max_new_tokens: MaxNewTokens = 128,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the result as JSON here.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """A's win-rate over B on the prompts, with a 95% bootstrap interval: from ratings, else a reward model."""
    from tunelab.feedback.winrate import compare_models
    from tunelab.files import write_text_atomic

    result = compare_models(
        a, b, prompts, database=db, reward=reward, n_boot=n_boot, seed=seed, max_new_tokens=max_new_tokens
    )
    low, high = result["ci95"]
    out.print(
        f"{result['a']} vs {result['b']}: win-rate {result['win_rate']:.3f} (95% CI {low:.3f}-{high:.3f}), "
        f"n={result['n_prompts']} prompts, {result['n_judgements']} judgements: {result['wins']} wins, "
        f"{result['ties']} ties, {result['both_bad']} both bad, {result['losses']} losses"
    )
    out.print(f"judged by {result['judged_by']}")
    if result.get("prompts_without_ratings"):
        console.print(
            f"note: {result['prompts_without_ratings']} prompt(s) have no ratings and were not judged"
        )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json_out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
