"""Suggestions: changes to the recipe that would make it fit, least change to the training result
first, each at its mildest setting that fits and with its new estimate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.plan.memory import MemoryEstimate, ParamFacts, Workload, estimate_memory
from tunelab.plan.shapes import Quantisation, method_facts
from tunelab.tasks.registry import task_spec

if TYPE_CHECKING:
    from tunelab.config import Recipe


# Ranks: 0 the same gradients (only slower); 1 a little data cut; 2 fewer weights trained; 3 a
# quantised base on top of that; 4 a lot of data cut. Within a rank, the order they are listed in.
SAME_RESULT, LITTLE_CUT, FEWER_WEIGHTS, QUANTISED, MUCH_CUT = range(5)
LITTLE_CUT_SHARE = 0.05  # truncating at most this share of the training tokens counts as a little


@dataclass(frozen=True)
class Alternative:
    """Another method the model could be trained with, counted on the meta device."""

    label: str  # "lora", "lora over an 8-bit base", "qlora"
    overrides: tuple[str, ...]
    params: ParamFacts
    quantised: bool  # peft's k-bit preparation also turns gradient checkpointing on
    chunked_loss: bool
    rank: int


@dataclass(frozen=True)
class Suggestion:
    change: str
    overrides: tuple[str, ...]  # --set KEY=VALUE pairs that make the change (none: no recipe field yet)
    effect: str  # what it costs, and what it changes in the result
    estimate: MemoryEstimate
    rank: int


def suggest(
    recipe: Recipe,
    estimate: MemoryEstimate,
    budget: int,
    *,
    alternatives: list[Alternative] | None = None,
    lengths: list[int] | None = None,
) -> list[Suggestion]:
    """Single changes that bring the estimate within `budget`, least change to the result first, each
    at its mildest setting that fits; if none alone does, one combination of them."""
    if estimate.total <= budget:
        return []
    found = [
        _smaller_micro_batch(recipe, estimate, budget),
        _checkpointing(recipe, estimate, budget),
        *(_other_method(estimate, budget, alternative) for alternative in alternatives or []),
        _shorter_rows(recipe, estimate, budget, lengths),
    ]
    singles = sorted((s for s in found if s is not None), key=lambda s: s.rank)  # stable: list order
    if singles:
        return singles
    combined = _combination(recipe, estimate, budget, alternatives or [], lengths)
    return [combined] if combined is not None else []


def _fits(params: ParamFacts, work: Workload, budget: int) -> MemoryEstimate | None:
    estimate = estimate_memory(params, work)
    return estimate if estimate.total <= budget else None


def _smaller_micro_batch(recipe: Recipe, estimate: MemoryEstimate, budget: int) -> Suggestion | None:
    """The largest smaller micro-batch that divides the recipe's, so the effective batch is kept."""
    work, batch, accum = estimate.work, recipe.train.batch_size, recipe.train.grad_accum
    for size in sorted((d for d in range(1, batch) if batch % d == 0), reverse=True):
        # (the workload's batch is smaller than the recipe's when the data holds fewer rows)
        new = _fits(estimate.params, dataclasses.replace(work, batch_size=min(size, work.batch_size)), budget)
        if new is not None:
            factor = batch // size
            return Suggestion(
                f"micro-batch {size} with grad_accum {accum * factor} (effective batch kept)",
                (f"train.batch_size={size}", f"train.grad_accum={accum * factor}"),
                "same gradients (tunelab's accumulation equals the full batch); smaller matmuls run slower",
                new,
                SAME_RESULT,
            )
    return None


def _checkpointing(recipe: Recipe, estimate: MemoryEstimate, budget: int) -> Suggestion | None:
    if estimate.work.checkpointing:
        return None
    new = _fits(estimate.params, dataclasses.replace(estimate.work, checkpointing=True), budget)
    if new is None:
        return None
    return Suggestion(
        "gradient checkpointing",
        CHECKPOINTING_OVERRIDE,
        "same gradients; about a third more compute (each block's forward runs again in backward)",
        new,
        SAME_RESULT,
    )


CHECKPOINTING_OVERRIDE = ("train.gradient_checkpointing=true",)


def _method_work(work: Workload, alternative: Alternative) -> Workload:
    """The workload under another (adapter) method: gradients flow through every block, and DPO's
    reference is the adapter-disabled model rather than a copy."""
    work = dataclasses.replace(
        work, grad_layers=work.shape.num_layers, chunked_loss=alternative.chunked_loss, reference_copy=False
    )
    if alternative.quantised:  # k-bit preparation: checkpointing on, norms and head upcast to float32
        work = dataclasses.replace(work, checkpointing=True, dtype_bytes=4)
    return work


def _other_method(estimate: MemoryEstimate, budget: int, alternative: Alternative) -> Suggestion | None:
    new = _fits(alternative.params, _method_work(estimate.work, alternative), budget)
    if new is None:
        return None
    params = alternative.params
    effect = (
        f"trains {params.trainable:,} parameters ({params.trainable / max(params.total, 1):.2%}) "
        f"instead of {estimate.params.trainable:,}"
    )
    if alternative.quantised:
        effect += "; the frozen base is quantised (CUDA only)"
    return Suggestion(f"method {alternative.label}", alternative.overrides, effect, new, alternative.rank)


def _shorter_rows(
    recipe: Recipe, estimate: MemoryEstimate, budget: int, lengths: list[int] | None
) -> Suggestion | None:
    """The longest max_seq_len (halving) that fits, with what it would cut from the training data."""
    work = estimate.work
    size = work.seq_len // 2
    while size >= 8:
        new = _fits(estimate.params, dataclasses.replace(work, seq_len=size), budget)
        if new is not None:
            return _cut_suggestion(recipe, size, new, lengths)
        size //= 2
    return None


def _cut_suggestion(recipe: Recipe, size: int, new: MemoryEstimate, lengths: list[int] | None) -> Suggestion:
    if "text" in task_spec(recipe.task).record_kinds:  # long documents are cut into chunks: no token lost
        effect, rank = (
            "documents are cut into more, shorter rows: no tokens lost, shorter context",
            LITTLE_CUT,
        )
    elif lengths:
        cut = sum(max(0, n - size) for n in lengths) / max(sum(lengths), 1)
        longer = sum(n > size for n in lengths)
        effect = f"truncates {longer:,} of {len(lengths):,} training rows ({cut:.1%} of their tokens)"
        rank = LITTLE_CUT if cut <= LITTLE_CUT_SHARE else MUCH_CUT
    else:
        effect, rank = f"truncates every row longer than {size} tokens", MUCH_CUT
    return Suggestion(f"max_seq_len {size}", (f"train.max_seq_len={size}",), effect, new, rank)


def _combination(
    recipe: Recipe,
    estimate: MemoryEstimate,
    budget: int,
    alternatives: list[Alternative],
    lengths: list[int] | None,
) -> Suggestion | None:
    """Micro-batch 1 with gradient checkpointing; then also each other method in turn; then also
    shorter rows: the first of these that fits. Only changes a recipe can make."""
    lean = dataclasses.replace(estimate.work, batch_size=1, checkpointing=True)
    accum = recipe.train.grad_accum * recipe.train.batch_size
    base = ("train.batch_size=1", f"train.grad_accum={accum}", *CHECKPOINTING_OVERRIDE)
    first = "micro-batch 1, gradient checkpointing"
    options: list[tuple[ParamFacts, Workload, str, tuple[str, ...], str]] = [
        (estimate.params, lean, first, (), "same gradients, slower")
    ]
    for alt in sorted(alternatives, key=lambda a: a.rank):
        trains = f"{alt.params.trainable:,} parameters trained"
        options.append(
            (alt.params, _method_work(lean, alt), f"{first}, method {alt.label}", alt.overrides, trains)
        )
    for params, work, change, overrides, effect in options:
        new = estimate_memory(params, work)
        if new.total > budget:
            shorter = _shorter_rows(recipe, new, budget, lengths)
            if shorter is None:
                continue
            new, change = shorter.estimate, f"{change}, {shorter.change}"
            overrides, effect = overrides + shorter.overrides, f"{effect}; {shorter.effect}"
        return Suggestion(f"together: {change}", base + overrides, effect, new, MUCH_CUT)
    return None


def alternatives_for(recipe: Recipe, label_map: dict[str, int] | None, cuda: bool) -> list[Alternative]:
    """Leaner methods to suggest: LoRA instead of full/freeze; on CUDA also LoRA over an 8-bit base and
    QLoRA (bitsandbytes needs CUDA, and recipes using it are refused elsewhere)."""
    from tunelab.methods.lora import LoraMethod, QloraMethod
    from tunelab.methods.registry import method_spec

    name, spec = recipe.method.name, method_spec(recipe.method.name)
    # A LoRA-family recipe keeps its rank and targets; any other starts from LoRA's defaults.
    lora_fields = recipe.method.model_dump() if isinstance(recipe.method, LoraMethod) else {}
    lora = LoraMethod(**{**lora_fields, "name": "lora"})
    wanted: list[tuple[str, Any, Quantisation | None, int, tuple[str, ...]]] = []
    if spec.trains_base_weights:
        wanted.append(("lora", lora, None, FEWER_WEIGHTS, (_method_override(lora),)))
    leaner = spec.trains_base_weights or (
        isinstance(recipe.method, LoraMethod) and spec.quantised_base is None
    )
    if cuda and leaner and name != "qlora" and not recipe.model.load_in_8bit:
        over = (_method_override(lora), "model.load_in_8bit=true")
        wanted.append(("lora over an 8-bit base", lora, "8bit", QUANTISED, over))
        qlora = QloraMethod(**{**lora.model_dump(), "name": "qlora"})
        wanted.append(("qlora", qlora, "4bit", QUANTISED, (_method_override(qlora),)))
    found = []
    for label, method, quantisation, rank, overrides in wanted:
        params, chunked, _ = method_facts(recipe, method, label_map, quantisation)
        found.append(Alternative(label, overrides, params, quantisation is not None, chunked, rank))
    return found


def _method_override(method: Any) -> str:
    """`method={name: lora, r: 8, alpha: 16}`: the whole section, so a freeze recipe's `k` goes too."""
    keys = ["name", "r", "alpha"]
    return "method={" + ", ".join(f"{key}: {getattr(method, key)}" for key in keys) + "}"
