"""`plan`: all of it for one recipe. Tokenise the data, count the model on the meta device, estimate,
probe where the machine can hold it, and suggest changes if it does not fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.plan.measure import CUDA_CONTEXT_BYTES, current_rss, machine_memory
from tunelab.plan.memory import (
    MemoryEstimate,
    ModelShape,
    RunEstimate,
    Scoring,
    Workload,
    estimate_memory,
    estimate_run,
)
from tunelab.plan.probing import Probe, held_out_examples, probe, row_tokens
from tunelab.plan.shapes import method_facts
from tunelab.plan.suggestions import Suggestion, alternatives_for, suggest
from tunelab.tasks.registry import task_spec

if TYPE_CHECKING:  # the heavy imports (torch, transformers) happen inside the functions that need them
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData


@dataclass(frozen=True)
class PlanResult:
    recipe: Recipe
    device: str
    budget: int
    budget_source: str  # "--memory", "RAM" or "GPU memory"
    estimate: MemoryEstimate  # the training peak, by component
    run: RunEstimate  # the whole `tunelab train` process: training, evaluation and baselines phases
    probe: Probe | None
    suggestions: list[Suggestion]
    steps_per_epoch: int
    total_steps: int
    notes: list[str] = field(default_factory=list)
    probe_out_of_memory: bool = False  # the probe hit CUDA's out-of-memory error: it does not fit

    @property
    def needed(self) -> int:
        """The whole run's peak: the larger of the estimate and the probe's measurement."""
        return max(self.run.peak, self.probe.run_peak_bytes if self.probe else 0)

    @property
    def fits(self) -> bool:
        return self.needed <= self.budget and not self.probe_out_of_memory


def plan(recipe: Recipe, memory_budget: int | None = None, probe_steps: int = 3) -> PlanResult:
    """Estimate, optionally probe (`probe_steps` > 0), and if it does not fit in `memory_budget` (default:
    the machine's RAM, or the GPU's memory on CUDA), suggest changes that would make it fit."""
    import torch

    from tunelab.config import check_host
    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.models.load import check_sequence_length, load_tokenizer, quantisation_for
    from tunelab.paraphrase import paraphraser_for

    cuda = torch.cuda.is_available()
    check_host(recipe)
    check_sequence_length(recipe)
    tokenizer = load_tokenizer(recipe.model, recipe.task)
    data = tokenize_records(recipe, load_records(recipe, paraphraser=paraphraser_for(recipe)), tokenizer)
    quantisation = quantisation_for(recipe.method.name, recipe.model.load_in_8bit)
    params, chunked, shape = method_facts(recipe, recipe.method, data.label_map, quantisation)
    # Measured now, before any weights: the imports `tunelab train` makes (the runner's; the model's
    # code and peft, brought in by the meta build) and the tokenised data. On CPU this is most of a
    # small model's footprint.
    overhead = CUDA_CONTEXT_BYTES if cuda else _process_baseline()
    estimate = estimate_memory(params, workload(recipe, shape, data, overhead, chunked, cuda))
    run = estimate_run(estimate, *scoring_passes(recipe, data))
    measured, note = _guarded_probe(recipe, probe_steps, data, tokenizer, run)
    budget = memory_budget or machine_memory(cuda)
    suggestions: list[Suggestion] = []
    needed = max(run.peak, measured.run_peak_bytes if measured else 0)
    if needed > budget:
        # Suggestions change the training peak; where another phase or the probe needs more, they must
        # fit with that margin too.
        margin = max(0, needed - estimate.total)
        lengths = None if data.packed else [row_tokens(e) for e in data.splits["train"]]
        alternatives = alternatives_for(recipe, data.label_map, cuda)
        suggestions = suggest(recipe, estimate, budget - margin, alternatives=alternatives, lengths=lengths)
    per_epoch = _micro_batches_per_epoch(recipe, data, tokenizer)
    return PlanResult(
        recipe=recipe,
        device="cuda" if cuda else "cpu",
        budget=budget,
        budget_source="--memory" if memory_budget else ("GPU memory" if cuda else "RAM"),
        estimate=estimate,
        run=run,
        probe=measured,
        suggestions=suggestions,
        steps_per_epoch=math.ceil(per_epoch / recipe.train.grad_accum),
        total_steps=_total_steps(recipe, per_epoch),
        notes=[note] if note else [],
        probe_out_of_memory=note == OUT_OF_MEMORY,
    )


OUT_OF_MEMORY = "the probe ran out of GPU memory: it does not fit on this GPU"


def _guarded_probe(
    recipe: Recipe, steps: int, data: PreparedData, tokenizer: Any, run: RunEstimate
) -> tuple[Probe | None, str | None]:
    """(the probe, a note) -- not tried where the estimate says this machine cannot hold it: on CPU the
    kernel would kill the process rather than raise."""
    import torch

    if steps < 1:
        return None, None
    if run.peak > machine_memory(torch.cuda.is_available()):
        return None, "probe skipped: the estimate is more than this machine's memory"
    try:
        return probe(recipe, steps, data=data, tokenizer=tokenizer, scoring=run.scoring), None
    except torch.cuda.OutOfMemoryError:
        return None, OUT_OF_MEMORY


def scoring_passes(recipe: Recipe, data: PreparedData) -> tuple[Scoring | None, Scoring | None]:
    """The largest no-grad passes `tunelab train` makes besides training: (evaluation, baselines).

    Evaluation scores the validation and test splits in batches of train.batch_size, padded to their
    longest row. The sft baselines score conversations BASELINE_BATCH at a time, and the few-shot one
    fills them with shots up to max_seq_len; the classify baselines embed the scored texts 32 at a time.
    """
    from tunelab.evaluation.baselines import BASELINE_BATCH, EMBED_BATCH

    held_out = held_out_examples(data)
    if not held_out:
        return None, None
    longest = max(row_tokens(e) for e in held_out)
    rows = min(recipe.train.batch_size, len(held_out))
    evaluation = Scoring(rows, longest, f"{rows} held-out rows x {longest} tokens (the longest)")
    baselines, task = None, task_spec(recipe.task)
    runs_base = bool(recipe.eval.baselines) and task.baselines is not None  # the base model scores them
    if runs_base and task.causal_lm:  # zero- and few-shot conversations
        length = recipe.train.max_seq_len if "few_shot" in recipe.eval.baselines else longest
        count = min(BASELINE_BATCH, len(held_out))
        baselines = Scoring(
            count, length, f"{count} conversations x {length} tokens (few-shot fills max_seq_len)"
        )
    elif runs_base and task.head.labels_examples:  # the encoder's embeddings of the texts
        count = min(EMBED_BATCH, len(held_out))
        baselines = Scoring(count, longest, f"{count} texts x {longest} tokens, embedded")
    return evaluation, baselines


def _process_baseline() -> int:
    import tunelab.runner  # noqa: F401  (the training process imports it, and all it brings)

    return current_rss()


def workload(
    recipe: Recipe,
    shape: ModelShape,
    data: PreparedData,
    overhead: int,
    chunked_loss: bool,
    cuda: bool = False,
) -> Workload:
    """The recipe's batch as the estimator sees it. The row length is the longest training row (capped by
    max_seq_len at tokenisation): batches are padded to their longest row, and over an epoch the
    longest row turns up in some batch."""
    from tunelab.methods.full import FreezeMethod
    from tunelab.methods.prompt_learning import PromptMethod
    from tunelab.methods.registry import method_spec
    from tunelab.models.load import quantisation_for
    from tunelab.models.precision import precision_for

    cfg, method, train = recipe.train, recipe.method, data.splits["train"]
    task = task_spec(recipe.task)
    seq_len = max((row_tokens(e) for e in train), default=cfg.max_seq_len)
    if isinstance(method, PromptMethod):  # its virtual tokens run through every block too (prefix
        # tuning's join the keys and values only)
        seq_len += method.num_virtual_tokens
    quantised = quantisation_for(method.name, recipe.model.load_in_8bit) is not None
    return Workload(
        shape=shape,
        batch_size=min(cfg.batch_size, max(len(train), 1)),
        seq_len=seq_len,
        # A quantised base computes in bfloat16 but its norms (hence the residual stream) run in float32.
        # Under autocast the saved activations are mostly the matmuls' bf16 outputs.
        dtype_bytes=4 if quantised else precision_for(recipe).activation_dtype.itemsize,
        grad_layers=method.k if isinstance(method, FreezeMethod) else shape.num_layers,
        rows_per_example=task.rows_per_example,
        checkpointing=quantised or cfg.gradient_checkpointing,
        # CUDA's sdpa kernels apply attention dropout without materialising the probabilities.
        attention_probs=shape.eager_attention or (shape.attention_dropout > 0 and not cuda),
        causal_lm=task.causal_lm,
        chunked_loss=chunked_loss,
        reference_copy=task.preference_section
        and recipe.preference.objective != "orpo"
        and method_spec(method.name).trains_base_weights,
        overhead=overhead,
    )


def _micro_batches_per_epoch(recipe: Recipe, data: PreparedData, tokenizer: Any) -> int:
    from types import SimpleNamespace

    from tunelab.training.setup import train_batches

    one_process = SimpleNamespace(num_processes=1, process_index=0, device="cpu")
    batches, _ = train_batches(recipe, data, tokenizer.pad_token_id or 0, one_process)
    return int(batches.per_epoch)


def _total_steps(recipe: Recipe, per_epoch: int) -> int:
    from tunelab.training.schedule import total_steps

    return total_steps(recipe.train, per_epoch)
