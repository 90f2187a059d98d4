"""The one training loop, on accelerate: every task and method runs through `fit`.

Why our own loop instead of transformers.Trainer: three invariants are tests here and each needs
control the Trainer does not give cleanly: accumulated loss == full-batch loss (we normalise by the
targets of the whole accumulation window, across processes); resume == uninterrupted (we own the
data order, so it is a pure function of seed, epoch and position); and loss masks we build ourselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from tunelab.config import TrainConfig
from tunelab.config.directions import watchable
from tunelab.data.tokenize import Example, collate
from tunelab.errors import RecipeError, StopRequested
from tunelab.training.objectives import Batch, Objective, count_input_tokens


@dataclass
class TrainState:
    """Everything besides model/optimizer/scheduler/RNG that exact resume needs; saved in checkpoints."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: epoch ...
    batch_in_epoch: int = 0  # ... and micro-batches of it consumed
    tokens: int = 0  # non-padding input tokens trained on, all processes
    best_metric: float | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    last_metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class MicroBatches:
    """A seeded, resumable stream of micro-batches: a fresh permutation each epoch, sharded by process.

    The order is a pure function of (seed, epoch, position), so resuming needs only the position,
    and skipping already-seen batches costs nothing (no data is read to skip it).
    """

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        pad_token_id: int,
        accelerator: Any,
        collate_fn: Callable[[list[Example], int], Batch] = collate,
        order_fn: Callable[[int], list[int]] | None = None,
        group_by_length: bool = False,
        grad_accum: int = 1,
    ):
        """`order_fn(epoch)` replaces the seeded permutation (multi-dataset mixtures draw their own).
        `group_by_length` batches examples of similar length together (see `_grouped_by_length`), in
        groups of whole optimizer batches (batch_size x grad_accum x processes)."""
        self.examples = examples
        self.order_fn = order_fn
        self.group_by_length = group_by_length
        self.drawn: Counter[str] = Counter()  # examples per dataset since the last log line
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.accelerator = accelerator
        self._order: tuple[int, list[list[int]]] | None = None

    @functools.cached_property
    def per_epoch(self) -> int:
        """Micro-batches per epoch (per process). Fixed for a run: a mixture draws as many each epoch."""
        draws = len(self.order_fn(0)) if self.order_fn is not None else len(self.examples)
        per_process = math.ceil(draws / self.accelerator.num_processes)
        return math.ceil(per_process / self.batch_size)

    def epoch_order(self, epoch: int) -> list[list[int]]:
        if self._order is None or self._order[0] != epoch:
            if self.order_fn is not None:
                perm = self.order_fn(epoch)
            else:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                perm = torch.randperm(len(self.examples), generator=generator).tolist()
                if self.group_by_length:
                    # Grouped by optimizer batch, then split: how a step's examples are cut into
                    # micro-batches and processes must not change which examples meet in it, or raising
                    # grad_accum to fit memory would train another model.
                    step_size = self.batch_size * self.grad_accum * self.accelerator.num_processes
                    perm = _grouped_by_length(perm, self.examples, step_size, generator)
            world, rank = self.accelerator.num_processes, self.accelerator.process_index
            perm += perm[: (-len(perm)) % world]  # wrap so every process gets as many batches
            mine = perm[rank::world]
            self._order = (
                epoch,
                [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)],
            )
        return self._order[1]

    def next(self, state: TrainState) -> Batch:
        order = self.epoch_order(state.epoch)
        indices = order[state.batch_in_epoch]
        state.batch_in_epoch += 1
        if state.batch_in_epoch == len(order):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        chosen = [self.examples[i] for i in indices]
        self.drawn.update(str(e["dataset"]) for e in chosen if "dataset" in e)
        return self.collate(chosen)

    def next_step(self, state: TrainState) -> list[Batch]:
        """One optimizer step's micro-batches: `grad_accum` of them, fewer at the end of an epoch. A
        step never straddles two epochs, so an epoch's last step holds that epoch's last examples, as
        one batch of batch_size x grad_accum would."""
        epoch = state.epoch
        micro = [self.next(state)]
        while len(micro) < self.grad_accum and state.epoch == epoch:
            micro.append(self.next(state))
        return micro

    def take_mix(self) -> dict[str, float]:
        """Each dataset's share of the examples drawn (this process) since the last call: `mix/<dataset>`."""
        total = sum(self.drawn.values())
        shares = {f"mix/{name}": count / total for name, count in sorted(self.drawn.items())} if total else {}
        self.drawn.clear()
        return shares

    def collate(self, examples: list[Example]) -> Batch:
        """On the host: `accumulate_gradients` counts its targets there, then moves it to the device."""
        return self.collate_fn(examples, self.pad_token_id)


class StepBatches(Protocol):
    """What `fit` draws from: MicroBatches, or under DP training/privacy.py's PoissonBatches."""

    @property
    def per_epoch(self) -> int: ...

    def next_step(self, state: TrainState) -> list[Batch]: ...

    def take_mix(self) -> dict[str, float]: ...

    def collate(self, examples: list[Example]) -> Batch: ...


GROUP_SPAN = 50  # global batches per sorted group: HF's LengthGroupedSampler uses the same multiple


def _grouped_by_length(
    perm: list[int], examples: list[Example], step_size: int, generator: torch.Generator
) -> list[int]:
    """Less padding, same randomness in what meets what: cut the permutation into groups of
    GROUP_SPAN global batches, sort each group by length, cut it into global batches, and shuffle the
    order of all batches (the longest batch first, so a run that does not fit fails at once).

    It works on whole optimizer batches (batch_size x grad_accum x processes) before they are sharded
    and cut into micro-batches, so every split of the same optimizer batch (N processes, k micro-batches
    each) sees exactly the examples one process of one big batch sees in each step.
    """
    span = step_size * GROUP_SPAN
    batches: list[list[int]] = []
    for start in range(0, len(perm), span):
        group = sorted(perm[start : start + span], key=lambda i: -example_length(examples[i]))
        batches += [group[i : i + step_size] for i in range(0, len(group), step_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    longest = max(range(len(batches)), key=lambda b: example_length(examples[batches[b][0]]))
    order.remove(longest)
    return [i for b in [longest, *order] for i in batches[b]]


def example_length(example: Example) -> int:
    if "input_ids" in example:
        return len(example["input_ids"])
    return len(example["chosen_input_ids"]) + len(example["rejected_input_ids"])  # a preference pair


def eval_batches(
    examples: list[Example],
    batch_size: int,
    pad_token_id: int,
    accelerator: Any,
    collate_fn: Callable[[list[Example], int], Batch] = collate,
) -> Iterator[Batch]:
    """Each process evaluates its own slice, in file order; metrics are summed across processes."""
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    for i in range(0, len(mine), batch_size):
        batch = collate_fn(mine[i : i + batch_size], pad_token_id)
        yield {k: v.to(accelerator.device) for k, v in batch.items()}


@dataclass(frozen=True)
class StepResult:
    """One optimizer step's loss and metrics. They stay device tensors: reading one (`loss`) waits for
    the device, so the loop reads them only on logging steps."""

    mean_loss: torch.Tensor  # mean over the window's targets, all processes
    targets: int  # label tokens (sft), examples (classify) or pairs (preference), all processes
    tokens: int  # non-padding input tokens, all processes
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # the objective's extra metrics, per target

    @property
    def loss(self) -> float:
        return float(self.mean_loss)


def accumulate_gradients(
    model: Any, objective: Objective, micro_batches: list[Batch], accelerator: Any
) -> StepResult:
    """Forward and backward over one optimizer step's micro-batches (host batches; moved here).

    Each micro-batch contributes loss_sum / total_targets, where the total covers every micro-batch
    of the window on every process. The gradient is therefore exactly that of the full batch, unlike
    a mean of per-micro-batch means, which over-weights tokens in short micro-batches.
    """
    # Counted on the host, before the copy to the device: counting there would wait for the device.
    local_targets = sum(objective.count_targets(b) for b in micro_batches)
    local_tokens = sum(count_input_tokens(b) for b in micro_batches)
    total_targets, total_tokens = _sum_over_processes(accelerator, local_targets, local_tokens)
    # DDP averages gradients over processes; scaling by the process count turns that mean back into a sum.
    scale = accelerator.num_processes / max(total_targets, 1)
    loss_sum = torch.zeros((), device=accelerator.device)
    stat_sums: dict[str, torch.Tensor] = {}
    for i, host_batch in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in host_batch.items()}
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):  # all-reduce once per step
            out = objective.loss(model, batch)
            accelerator.backward(out.loss_sum * scale)
        loss_sum += out.loss_sum.detach().float()
        for name, value in out.stats.items():
            stat_sums[name] = stat_sums.get(name, torch.zeros((), device=accelerator.device)) + value.detach()
    n = max(total_targets, 1)
    # Collectives, but no host sync: NCCL queues them on the device like any other kernel.
    mean_loss = accelerator.reduce(loss_sum, "sum") / n
    stats = {name: accelerator.reduce(value.float(), "sum") / n for name, value in stat_sums.items()}
    return StepResult(mean_loss, total_targets, total_tokens, stats)


def _sum_over_processes(accelerator: Any, *counts: int) -> tuple[int, ...]:
    """Per-process counts summed over all processes. This is the one host sync per step under several
    processes: exact normalisation needs the global target count before the first backward."""
    if accelerator.num_processes == 1:
        return counts
    local = torch.tensor(counts, device=accelerator.device)
    return tuple(int(x) for x in accelerator.reduce(local, "sum").tolist())


Accumulate = Callable[[Any, Objective, list[Batch], Any], StepResult]


@dataclass
class Hooks:
    """What the loop reports to and asks of the outside world (run folder, progress bar)."""

    evaluate: Callable[[], dict[str, float]] | None  # None when there is no validation split
    save_checkpoint: Callable[[int], object]
    log: Callable[[int, dict[str, float]], None]
    progress: Callable[[int, float, float], None]  # (step, loss, tokens/s)
    stop_requested: Callable[[], bool] = lambda: False  # checked after each step (training/stopping.py)
    # Called with (step, validation metrics) after each validation pass; a search's pruner raises here.
    after_validation: Callable[[int, dict[str, float]], None] = lambda step, metrics: None


def fit(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    objective: Objective,
    batches: StepBatches,
    cfg: TrainConfig,
    total_steps: int,
    state: TrainState,
    accelerator: Any,
    hooks: Hooks,
    accumulate: Accumulate | None = None,
) -> TrainState:
    """Steps until `total_steps` (or early stopping). `accumulate` replaces `accumulate_gradients`: DP's
    per-example clipping (training/privacy.py) plugs in there."""
    accumulate = accumulate or accumulate_gradients
    model.train()
    window: list[StepResult] = []
    window_start, window_tokens = time.perf_counter(), 0
    last_saved, last_loss = state.step, float("nan")
    grad_norm: torch.Tensor | None = None
    while state.step < total_steps and not state.stopped_early:
        micro = batches.next_step(state)
        result = accumulate(model, objective, micro, accelerator)
        grad_norm = optimizer_step(model, optimizer, scheduler, cfg, accelerator)
        state.step += 1
        state.tokens += result.tokens
        window.append(result)
        window_tokens += result.tokens
        tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)

        if state.step % cfg.log_every == 0 or state.step == total_steps:
            # The step's tensors are read here only: every other step runs without waiting for the device.
            epoch = state.epoch + state.batch_in_epoch / batches.per_epoch
            values = _train_log(window, scheduler, grad_norm, state, tokens_per_s, epoch)
            values.update(batches.take_mix())
            hooks.log(state.step, values)
            last_loss = values["loss"]
            window, window_start, window_tokens = [], time.perf_counter(), 0
        hooks.progress(state.step, last_loss, tokens_per_s)
        if hooks.evaluate is not None and (state.step % cfg.eval_every == 0 or state.step == total_steps):
            _evaluate_and_maybe_stop(hooks, cfg, state)
        if state.step % cfg.save_every == 0 or state.step == total_steps or state.stopped_early:
            hooks.save_checkpoint(state.step)
            last_saved = state.step
        if hooks.stop_requested():  # on the last step too: the scoring after training is work asked off
            if last_saved != state.step:
                hooks.save_checkpoint(state.step)
            raise StopRequested(state.step)
    if last_saved != state.step:  # resumed a run whose last step was already done but not saved
        hooks.save_checkpoint(state.step)
    return state


def optimizer_step(
    model: Any, optimizer: Any, scheduler: Any, cfg: TrainConfig, accelerator: Any
) -> torch.Tensor | None:
    """Clip, step, schedule. The gradient norm comes back as a device tensor, unread."""
    grad_norm = None
    if cfg.max_grad_norm is not None and cfg.privacy is None:  # DP clips each example instead
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _train_log(
    window: list[StepResult],
    scheduler: Any,
    grad_norm: torch.Tensor | None,
    state: TrainState,
    tokens_per_s: float,
    epoch: float,
) -> dict[str, float]:
    """The logging window's mean step loss and metrics, the last step's grad norm and learning rate."""
    losses = torch.stack([r.mean_loss for r in window]).tolist()  # one host sync for the whole window
    values = {
        "loss": sum(losses) / len(losses),
        "lr": float(scheduler.get_last_lr()[0]),
        "tokens": float(state.tokens),
        "tokens_per_s": tokens_per_s,
        "epoch": epoch,
    }
    if grad_norm is not None:
        values["grad_norm"] = float(grad_norm)
    values.update(_mean_stats(window))
    return values


def _mean_stats(window: list[StepResult]) -> dict[str, float]:
    names = sorted({name for result in window for name in result.stats})
    zero = torch.zeros(())
    return {name: sum(float(r.stats.get(name, zero)) for r in window) / len(window) for name in names}


def _evaluate_and_maybe_stop(hooks: Hooks, cfg: TrainConfig, state: TrainState) -> None:
    assert hooks.evaluate is not None
    metrics = hooks.evaluate()
    state.last_metrics = metrics
    hooks.log(state.step, metrics)
    hooks.after_validation(state.step, metrics)
    stopping = cfg.early_stopping
    if stopping is None:
        return
    if stopping.metric not in metrics:  # the recipe's checks name what each task logs; this is a backstop
        raise RecipeError(
            f"train.early_stopping.metric: the validation pass logged no {stopping.metric}",
            fix=f"watch one of {', '.join(watchable(sorted(metrics)))}",
        )
    value = metrics[stopping.metric]
    higher_is_better = stopping.higher_is_better  # one table of directions: config/directions.py
    best = state.best_metric
    if best is None or (
        value > best + stopping.min_delta if higher_is_better else value < best - stopping.min_delta
    ):
        state.best_metric, state.evals_since_best = value, 0
        return
    state.evals_since_best += 1
    if state.evals_since_best >= stopping.patience:
        state.stopped_early = True
