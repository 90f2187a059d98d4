"""The terminal: the estimate by component next to the measured peak, the verdict, the suggestions and
the time per epoch."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from tunelab.plan.memory import LOSS_CHUNK_TOKENS, GiB, MiB

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.plan.planner import PlanResult
    from tunelab.plan.suggestions import Suggestion


LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer": "optimizer state",
    "activations": "activations",
    "logits": "logits / loss",
    "overhead": "process baseline",
}


def render(result: PlanResult, console: Console) -> None:
    """The estimate next to the measured peak, the verdict, the suggestions and the time per epoch."""
    from rich.table import Table

    recipe, estimate = result.recipe, result.estimate
    table = Table(title=f"{recipe.name}: {recipe.task}, method {recipe.method.name}, on {result.device}")
    for column, justify in (("memory at the training peak", "left"), ("estimate", "right"), ("from", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, value in estimate.components().items():
        table.add_row(LABELS[name], size_text(value), _explain(name, result))
    table.add_row("total", size_text(estimate.total), "", style="bold")
    if result.probe is not None:
        probe = result.probe
        change = probe.peak_bytes / max(estimate.total, 1) - 1
        how = "resident-set high-water mark" if probe.device == "cpu" else "torch allocator peak + context"
        table.add_row(
            "measured peak", size_text(probe.peak_bytes), f"probe, {how} ({change:+.0%} vs estimate)"
        )
    console.print(table)
    console.print(_run_table(result))
    console.print(_verdict(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.suggestions:
        console.print(_suggestion_table(result.suggestions))
    console.print(_timing(result))


PHASES = {
    "training": "training (the table above)",
    "evaluation": "evaluation: weights + optimizer state + scoring",
    "baselines": "baselines: the base model's weights + scoring",
}


def _run_table(result: PlanResult) -> Any:
    """The whole `tunelab train` process: its peak is the largest phase's, which need not be training's."""
    from rich.table import Table

    run = result.run
    table = Table(title="the whole `tunelab train` process, by phase")
    for column, justify in (("phase", "left"), ("estimate", "right"), ("the pass it is sized for", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, value in run.phases.items():
        table.add_row(PHASES[name], size_text(value), run.scoring[name].what if name in run.scoring else "")
    table.add_row("run peak", size_text(run.peak), f"the {run.peak_phase} phase", style="bold")
    if result.probe is not None and result.probe.run_peak_bytes:
        change = result.probe.run_peak_bytes / max(run.peak, 1) - 1
        table.add_row(
            "measured run peak",
            size_text(result.probe.run_peak_bytes),
            f"probe: its steps, then each scoring pass once ({change:+.0%} vs estimate)",
        )
    return table


def size_text(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def _explain(name: str, result: PlanResult) -> str:
    estimate = result.estimate
    params, work = estimate.params, estimate.work
    if name == "weights":
        reference = " + a frozen reference copy (DPO)" if work.reference_copy else ""
        return f"{params.total:,} parameters{reference}"
    if name == "gradients":
        return f"{params.trainable:,} trainable ({params.trainable / max(params.total, 1):.2%})"
    if name == "optimizer":
        return "AdamW: 2 moments per trainable parameter, in its dtype"
    if name == "activations":
        rows = (
            f"{work.batch_size} x {work.rows_per_example}"
            if work.rows_per_example > 1
            else str(work.batch_size)
        )
        ckpt = ", gradient checkpointing" if work.checkpointing else ""
        return (
            f"{min(work.grad_layers, work.shape.num_layers)} of {work.shape.num_layers} blocks, "
            f"{rows} rows x {work.seq_len} tokens (longest row), {work.dtype_bytes}-byte{ckpt}"
        )
    if name == "logits":
        if not work.causal_lm:
            return "classification head: negligible"
        if work.chunked_loss:
            return f"fused loss: {LOSS_CHUNK_TOKENS} tokens x {work.shape.vocab_size:,} vocabulary at a time"
        return f"tokens x {work.shape.vocab_size:,} vocabulary: logits, float32 copy, log-softmax, gradient"
    if result.device == "cuda":
        return "CUDA context: a typical figure, not measured"
    return "measured: Python, torch, transformers and the data, before the model"


def _verdict(result: PlanResult) -> str:
    where = f"{size_text(result.budget)} ({result.budget_source})"
    if result.fits:
        return f"[green]fits[/] in {where}: needs {size_text(result.needed)}"
    text = f"[red]does not fit[/] in {where}: needs {size_text(result.needed)}"
    if not result.suggestions:
        return text + "; no change tunelab knows of brings it within that"
    return text + "; changes that would make it fit, least change to the result first:"


def _suggestion_table(suggestions: list[Suggestion]) -> Any:
    from rich.table import Table

    table = Table()
    for column in ("change", "options", "estimate", "effect"):
        table.add_column(column)
    for s in suggestions:
        options = " ".join(f"--set {shlex.quote(o)}" for o in s.overrides) or "-"
        table.add_row(s.change, options, size_text(s.estimate.total), s.effect)
    return table


def _timing(result: PlanResult) -> str:
    epoch = f"{result.steps_per_epoch:,} optimizer steps per epoch, {result.total_steps:,} in the run"
    probe = result.probe
    if probe is None:
        return f"time: {epoch}; run with --probe-steps N to measure a step"
    return (
        f"time: {probe.step_s:.2f} s per step ({probe.tokens_per_s:,.0f} tokens/s over {probe.steps} "
        f"probe steps): an epoch ~ {_duration(probe.step_s * result.steps_per_epoch)}, the run ~ "
        f"{_duration(probe.step_s * result.total_steps)} ({epoch}; evaluation and saving not included)"
    )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
