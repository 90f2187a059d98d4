"""The probe: a few real optimizer steps of the recipe's own training (the runner's data stage, model
loading, method, objective, batches and optimizer step), timed, with their peak memory measured."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.plan.measure import CUDA_CONTEXT_BYTES, current_rss, peak_rss, reset_peak_rss
from tunelab.plan.memory import Scoring

if TYPE_CHECKING:  # the heavy imports (torch, transformers) happen inside the functions that need them
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData
    from tunelab.training.setup import TrainingSetup


@dataclass(frozen=True)
class Probe:
    steps: int  # timed optimizer steps
    step_s: float  # mean wall time of one optimizer step (grad_accum micro-batches)
    tokens_per_s: float  # non-padding input tokens trained on per second
    peak_bytes: (
        int  # training's: CPU: resident-set high-water mark; CUDA: allocator peak + CUDA_CONTEXT_BYTES
    )
    baseline_bytes: int  # CPU: resident set when the model was about to load; CUDA: CUDA_CONTEXT_BYTES
    device: str
    run_peak_bytes: int = 0  # the same, over training and then the run's scoring passes (plan's phases)


def probe(
    recipe: Recipe,
    steps: int,
    *,
    data: PreparedData | None = None,
    tokenizer: Any = None,
    scoring: dict[str, Scoring] | None = None,
) -> Probe:
    """Load the model as `train` does and run 2 + `steps` optimizer steps of the recipe's training.

    The first two steps take the longest training examples: the first allocates the gradients and
    AdamW's state, the second then reaches the peak a whole epoch would (its longest batch). Neither is
    timed. The timed steps take the recipe's own batches from evenly spread places in the epoch, so
    their mean stands for the epoch's. One process: under `train --nproc N` each of N holds about this.
    Then each of `scoring`'s no-grad passes (evaluation, baselines) runs once, with the optimizer state
    still held as it is during a run's evaluations, for the whole run's peak.
    """
    from accelerate.utils import set_seed

    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.models.load import load_tokenizer
    from tunelab.models.precision import precision_for
    from tunelab.paraphrase import paraphraser_for
    from tunelab.training.precision import make_accelerator

    if steps < 1:
        raise ValueError(f"probe steps must be at least 1, got {steps}")
    set_seed(recipe.train.seed)
    precision = precision_for(recipe)
    accelerator = make_accelerator(precision.mixed_precision)
    if data is None:
        tokenizer = load_tokenizer(recipe.model, recipe.task)
        data = tokenize_records(recipe, load_records(recipe, paraphraser=paraphraser_for(recipe)), tokenizer)
    cuda = accelerator.device.type == "cuda"
    baseline = _start_measuring(cuda)
    setup = _training_setup(recipe, data, tokenizer, accelerator, precision)
    elapsed, tokens = _timed_steps(recipe, setup, data, steps, accelerator, cuda)
    peak = _peak(cuda, baseline)
    for shape in (scoring or {}).values():
        _score_once(recipe, setup, data, shape, tokenizer.pad_token_id or 0, accelerator)
    return Probe(
        steps,
        elapsed / steps,
        tokens / max(elapsed, 1e-9),
        peak,
        baseline,
        accelerator.device.type,
        run_peak_bytes=max(peak, _peak(cuda, baseline)),
    )


def _timed_steps(
    recipe: Recipe, setup: TrainingSetup, data: PreparedData, steps: int, accelerator: Any, cuda: bool
) -> tuple[float, int]:
    """Two untimed steps on the longest rows (the peak), then `steps` timed ones: (seconds, tokens)."""
    import torch

    from tunelab.training.loop import TrainState, accumulate_gradients, optimizer_step

    model, batches = setup.model, setup.batches
    accumulate = setup.privacy.accumulate if setup.privacy is not None else accumulate_gradients
    longest = batches.collate(_longest_rows(data.splits["train"], recipe.train.batch_size))
    for _ in range(2):
        accumulate(model, setup.objective, [longest], accelerator)
        optimizer_step(model, setup.optimizer, setup.scheduler, recipe.train, accelerator)
    state, elapsed, tokens = TrainState(), 0.0, 0
    for i in range(steps):
        # Each timed step starts mid-way through its own equal share of the epoch, so a few steps
        # sample the whole of it: length-grouped batching puts the longest batch first on purpose.
        position = (2 * i + 1) * batches.per_epoch // (2 * steps)
        state.epoch, state.batch_in_epoch = 0, min(position, batches.per_epoch - 1)
        micro = batches.next_step(state)
        started = time.perf_counter()
        result = accumulate(model, setup.objective, micro, accelerator)
        optimizer_step(model, setup.optimizer, setup.scheduler, recipe.train, accelerator)
        if cuda:
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - started
        tokens += result.tokens
    return elapsed, tokens


def _peak(cuda: bool, baseline: int) -> int:
    import torch

    return baseline + int(torch.cuda.max_memory_allocated()) if cuda else peak_rss()


def _score_once(
    recipe: Recipe,
    setup: TrainingSetup,
    data: PreparedData,
    shape: Scoring,
    pad_id: int,
    accelerator: Any,
) -> None:
    """One no-grad pass of `shape.rows` held-out rows of `shape.seq_len` tokens, through the objective
    as the run's evaluation computes it."""
    from tunelab.evaluation.metrics import evaluate
    from tunelab.training.loop import eval_batches
    from tunelab.training.objectives import collate_for

    longest = _longest_rows(held_out_examples(data), shape.rows)
    rows = [_sized(longest[i % len(longest)], shape.seq_len) for i in range(shape.rows)]
    batches = eval_batches(rows, shape.rows, pad_id, accelerator, collate_for(recipe.task))
    evaluate(setup.model, batches, setup.objective, recipe.task, accelerator, prefix="probe")


def _sized(example: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """The example's token lists repeated (or cut) to `seq_len`: the length is what memory depends on."""

    def fit(values: list[Any]) -> list[Any]:
        return (values * (seq_len // max(len(values), 1) + 1))[:seq_len]

    return {key: fit(value) if isinstance(value, list) else value for key, value in example.items()}


def _start_measuring(cuda: bool) -> int:
    """The baseline, and the peak counter reset: from here on the peak is the probe's own."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        return CUDA_CONTEXT_BYTES
    reset_peak_rss()
    return current_rss()


def _training_setup(
    recipe: Recipe, data: PreparedData, tokenizer: Any, accelerator: Any, precision: Any
) -> TrainingSetup:
    """The run's own setup (training/setup.py), without train.compile: the probe's few steps would time
    the compilation, not the training."""
    from tunelab.training.setup import attach_method, build_training, load_for_training

    loaded = load_for_training(recipe, data.label_map, tokenizer, precision)
    model = attach_method(recipe, loaded, precision, data, compile_model=False)
    setup = build_training(recipe, model, data, loaded.tokenizer.pad_token_id, accelerator)
    setup.model.train()
    return setup


def held_out_examples(data: PreparedData) -> list[dict[str, Any]]:
    """The rows a run scores besides training: validation, then test."""
    return [e for split in ("validation", "test") for e in data.splits.get(split, [])]


def row_tokens(example: dict[str, Any]) -> int:
    """Tokens in a training row: its input_ids, or the longer answer of a preference pair."""
    return max(len(value) for key, value in example.items() if key.endswith("input_ids"))


def _longest_rows(examples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return sorted(examples, key=row_tokens)[-count:]
