"""`tunelab plan`: will this recipe's training fit in memory, and how long will an epoch take?

Three parts, each usable on its own:

- `estimate_memory` is pure arithmetic: weights, gradients, AdamW state, activations, the loss's logits
  and the process's own footprint, from the model's shape (read through AutoConfig), its parameter
  counts under the recipe's method (counted on a `meta`-device copy: no weights are read) and the batch.
- `probe` runs a few real optimizer steps of the recipe's own training (the runner's data stage, model
  loading, method, objective, batches and optimizer step) and measures step time and peak memory.
- `suggest` lists changes that would make a recipe fit, least change to the training result first,
  each with its new estimate.

Memory is what this loop allocates, not a generic formula: tunelab trains the weights in their loaded
dtype without autocast (float32 on CPU, bfloat16 on a CUDA GPU that supports it), and torch's AdamW keeps
its two moments in the parameter's dtype, so there are no float32 master weights unless `master_weights`
says so (a DeepSpeed/apex-style mixed-precision setup). On CPU the process's baseline (Python, torch,
transformers and the tokenised data: 300-500 MB before any weights) is measured, not assumed: it is the
resident set size when the model is about to be loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import resource
import shlex
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the heavy imports (torch, transformers) happen inside the functions that need them
    from rich.console import Console

    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData

MiB = 2**20
GiB = 2**30

# Elements each transformer block keeps for backward, per token, as multiples of the hidden size and of
# the MLP width. torch's saved-tensor hooks count exactly 11 x hidden + 4 x intermediate for a Llama
# block (norm outputs, q/k/v, rotated q/k, attention output, residuals; gate, up, act(gate), product).
# The resident set on CPU grows about a quarter more per block (the allocator keeps freed forward
# buffers), so the constants are fitted to measured peaks instead: tiny Llamas with hidden 256-512,
# MLP 688-1376, 2-8 blocks, 4-16 x 128-512 tokens. A GELU MLP keeps half the gated one's
# (projection and activation); checked on MiniLM-L6, full and LoRA.
HIDDEN_ELEMENTS_PER_TOKEN = 13.8
GATED_MLP_ELEMENTS_PER_TOKEN = 5.4  # SwiGLU: gate and up projections, the activation and the product
PLAIN_MLP_ELEMENTS_PER_TOKEN = 2.7  # GELU: one projection and its activation
# Outside the blocks: the embeddings' output and the final norm's input and output.
OUTSIDE_ELEMENTS_PER_TOKEN = 3
# The plain loss path (objectives.causal_lm without the fused loss) holds, at its peak in backward,
# the logits, their float32 copy for the loss, log-softmax's output and its gradient, each
# [tokens, vocabulary]: four float32-sized buffers (one in the weights' dtype).
PLAIN_LOSS_FLOAT32_BUFFERS = 3
# training/losses.py's fused loss works through at most this many target tokens' logits at a time.
LOSS_CHUNK_TOKENS = 1024
# On CUDA the context and kernels take memory that torch's counters do not see; a typical figure.
CUDA_CONTEXT_BYTES = 512 * MiB
# bitsandbytes storage per quantised weight: NF4 packs two per byte, plus an 8-bit absmax per block of
# 64 and (double quantisation) a float32 per 256 blocks; LLM.int8 is one byte plus a float32 per row.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES_PER_WEIGHT = 1.0
# Modules that stay unquantised (see models/load.py): the output head and new classification heads.
UNQUANTISED_HEADS = ("lm_head", "classifier", "score", "pooler")

Quantisation = Literal["4bit", "8bit"]


# ---------------------------------------------------------------------------------------------
# What the estimate is made from


@dataclass(frozen=True)
class ModelShape:
    """The config values activations depend on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    gated_mlp: bool = True  # SwiGLU-style (Llama, Mistral, Qwen) rather than one GELU projection (BERT)
    attention_dropout: float = 0.0
    eager_attention: bool = False  # attention as plain matmuls and softmax (not sdpa / flash)


@dataclass(frozen=True)
class ParamFacts:
    """Parameters of one model under one method, as they would sit in memory."""

    total: int
    trainable: int
    weight_bytes: int  # every parameter as stored (a quantised base: packed)
    trainable_bytes: int  # trainable parameters in their own dtype: the size of the gradients
    head_grad_bytes: int = 0  # the output head's weight when it trains (the fused loss sums its gradient)


@dataclass(frozen=True)
class Workload:
    """Everything besides the parameters that the peak depends on."""

    shape: ModelShape
    batch_size: int  # examples per micro-batch
    seq_len: int  # tokens in the longest row a micro-batch can hold (after padding)
    dtype_bytes: int  # element size of activations: the weights' dtype (no autocast)
    grad_layers: int  # blocks whose activations are kept for backward (freeze: only the top k)
    rows_per_example: int = 1  # preference and reward: a chosen and a rejected row per example
    checkpointing: bool = False
    # Attention probabilities materialised (b x heads x length^2): eager attention, or dropout on the
    # attention probabilities on CPU, where sdpa then takes its plain math path.
    attention_probs: bool = False
    causal_lm: bool = True  # the loss needs vocabulary logits (sft, pretrain, preference)
    # tunelab's fused, chunked cross-entropy (training/losses.py). Off by default here, so the estimator
    # on its own describes the plain loss; `plan` turns it on where the objective will take that path.
    chunked_loss: bool = False
    master_weights: bool = False  # float32 master copy + float32 moments (not how tunelab trains)
    reference_copy: bool = False  # DPO/IPO with full/freeze: a frozen copy of the starting weights
    overhead: int = 0  # the process before any weights: measured RSS on CPU


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component at the training peak (backward of a step, with optimizer state allocated)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    params: ParamFacts = field(compare=False)
    work: Workload = field(compare=False)

    @property
    def total(self) -> int:
        return sum(self.components().values())

    def components(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "logits": self.logits,
            "overhead": self.overhead,
        }


def estimate_memory(params: ParamFacts, work: Workload) -> MemoryEstimate:
    """The training peak of `params` under `work`, by component. Pure arithmetic."""
    weights = params.weight_bytes * (2 if work.reference_copy else 1)
    gradients = params.trainable_bytes
    # torch's AdamW: exp_avg and exp_avg_sq, shaped and typed like the parameter.
    optimizer = 2 * params.trainable_bytes
    if work.master_weights:  # a float32 master copy, and the moments kept in float32 too
        optimizer = 3 * 4 * params.trainable
    return MemoryEstimate(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        activations=activation_bytes(work),
        logits=logits_bytes(params, work),
        overhead=work.overhead,
        params=params,
        work=work,
    )


def activation_bytes(work: Workload) -> int:
    """What the forward pass keeps for backward, summed over the blocks gradients flow through."""
    shape = work.shape
    tokens = work.batch_size * work.rows_per_example * work.seq_len
    mlp = GATED_MLP_ELEMENTS_PER_TOKEN if shape.gated_mlp else PLAIN_MLP_ELEMENTS_PER_TOKEN
    per_block = tokens * (HIDDEN_ELEMENTS_PER_TOKEN * shape.hidden_size + mlp * shape.intermediate_size)
    if work.attention_probs:  # scores, softmax, dropout mask (1 byte) and dropped probabilities
        rows = work.batch_size * work.rows_per_example
        per_block += rows * shape.num_heads * work.seq_len**2 * (3 + 1 / work.dtype_bytes)
    layers = min(work.grad_layers, shape.num_layers)
    if work.checkpointing and layers > 0:
        # Each block keeps only its input; one block at a time is recomputed in full during backward.
        kept = layers * tokens * shape.hidden_size + per_block
    else:
        kept = layers * per_block
    outside = OUTSIDE_ELEMENTS_PER_TOKEN * tokens * shape.hidden_size
    return int((kept + outside) * work.dtype_bytes)


def logits_bytes(params: ParamFacts, work: Workload) -> int:
    """The loss's vocabulary-sized buffers (0 for a classification head: batch x labels is nothing)."""
    if not work.causal_lm:
        return 0
    shape = work.shape
    tokens = work.batch_size * work.rows_per_example * work.seq_len
    if work.chunked_loss:
        # One chunk's float32 logits (worked in place into its gradient), the hidden states' gradient
        # computed in forward and held until backward, and the head's weight gradient likewise.
        chunk = min(tokens, LOSS_CHUNK_TOKENS) * shape.vocab_size * 4
        return chunk + tokens * shape.hidden_size * work.dtype_bytes + params.head_grad_bytes
    return tokens * shape.vocab_size * (work.dtype_bytes + PLAIN_LOSS_FLOAT32_BUFFERS * 4)


# ---------------------------------------------------------------------------------------------
# The model's shape and parameters, without reading its weights


def model_shape(config: Any, gated_mlp: bool) -> ModelShape:
    """ModelShape from a transformers config (a multimodal config's text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(_config_value(text, "hidden_size", "n_embd", "d_model"))
    heads = int(_config_value(text, "num_attention_heads", "n_head"))
    return ModelShape(
        hidden_size=hidden,
        # GPT-2 style configs leave the MLP width unset (n_inner: None), meaning 4 x hidden.
        intermediate_size=int(
            _config_value(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
        ),
        num_layers=int(_config_value(text, "num_hidden_layers", "n_layer")),
        num_heads=heads,
        num_kv_heads=int(_config_value(text, "num_key_value_heads", default=heads)),
        vocab_size=int(_config_value(text, "vocab_size")),
        gated_mlp=gated_mlp,
        attention_dropout=float(
            _config_value(
                text, "attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", default=0.0
            )
        ),
        eager_attention=getattr(config, "_attn_implementation", None) == "eager",
    )


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is None:
        from tunelab.errors import ModelLoadError

        raise ModelLoadError(f"the model's config has none of {', '.join(names)}; cannot estimate its memory")
    return default


def has_gated_mlp(model: Any, intermediate_size: int) -> bool:
    """Two projections up to the MLP width in one block (gate and up) mean a gated MLP; read from the
    model's structure rather than from a table of architectures."""
    import torch

    from tunelab.errors import RecipeError
    from tunelab.models.methods import find_blocks

    try:
        block = find_blocks(model, "plan")[0]
    except RecipeError:  # no stack of blocks to look at: count it as the plainer MLP
        return False
    widening = [
        m for m in block.modules() if isinstance(m, torch.nn.Linear) and m.out_features == intermediate_size
    ]
    return len(widening) >= 2


def meta_model(recipe: Recipe, label_map: dict[str, int] | None) -> tuple[Any, list[str]]:
    """The recipe's model on the `meta` device (shapes and dtypes, no data) and the modules its checkpoint
    lacks (a new head), found as load_model finds them: from from_pretrained's loading info."""
    import torch

    from tunelab.models import load

    source, local = load._resolve_source(recipe.model.name)
    options: dict[str, Any] = {
        "trust_remote_code": recipe.model.trust_remote_code,
        "revision": recipe.model.revision,
        "local_files_only": local or load._offline(),
        "device_map": "meta",
    }
    try:
        # The device context also puts whatever a method adds later (adapters) on meta.
        with torch.device("meta"):
            model, info = load._load_weights(source, recipe.task, label_map, _weights_dtype(recipe), options)
    except (OSError, ValueError) as exc:
        raise load._not_loadable(recipe.model.name, source, local, exc) from None
    return model, sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})


def param_facts(model: Any, quantisation: Quantisation | None = None) -> ParamFacts:
    """Counts and bytes of a (meta) model's parameters, tied weights once. With `quantisation`, the
    frozen Linear weights are stored as bitsandbytes would, and every other parameter in float32 (peft's
    prepare_model_for_kbit_training upcasts them)."""
    import torch

    seen: set[int] = set()
    total = trainable = weight_bytes = trainable_bytes = 0
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            count = param.numel()
            size = count * param.element_size()
            if quantisation is not None:
                quantised = (
                    name == "weight"
                    and not param.requires_grad
                    and isinstance(module, torch.nn.Linear)
                    and not set(module_name.split(".")) & set(UNQUANTISED_HEADS)
                )
                size = _quantised_bytes(module, count, quantisation) if quantised else count * 4
            total += count
            weight_bytes += size
            if param.requires_grad:
                trainable += count
                trainable_bytes += size
    return ParamFacts(total, trainable, weight_bytes, trainable_bytes, _head_grad_bytes(model))


def _quantised_bytes(module: Any, count: int, quantisation: Quantisation) -> int:
    if quantisation == "4bit":
        return math.ceil(count * NF4_BYTES_PER_WEIGHT)
    return int(count * INT8_BYTES_PER_WEIGHT) + 4 * module.out_features  # + a float32 scale per row


def _head_grad_bytes(model: Any) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None or not weight.requires_grad:
        return 0
    return int(weight.numel() * weight.element_size())


def fused_loss_applies(model: Any, task: str) -> bool:
    """Whether objectives.causal_lm will take training/losses.py's fused path for this model (a plain
    Linear head, no virtual tokens). False while that module is absent."""
    if task not in ("sft", "pretrain"):
        return False  # preference objectives compute their log-probabilities from full logits
    try:
        from tunelab.training.losses import output_head
    except ImportError:
        return False
    return output_head(model) is not None


# ---------------------------------------------------------------------------------------------
# Measuring memory


def current_rss() -> int:
    """This process's resident set size now (Linux /proc; elsewhere the peak so far, an overstatement)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/statm", encoding="ascii") as f,
    ):
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return _maxrss()


def reset_peak_rss() -> None:
    """Start the resident-set high-water mark afresh (Linux: clear_refs 5), so a probe in a process that
    did other work first (a test session, a notebook) measures its own peak, not an earlier one."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def peak_rss() -> int:
    """The resident-set high-water mark: VmHWM (which reset_peak_rss resets), else getrusage's maxrss."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _maxrss()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def machine_memory(cuda: bool) -> int:
    """What training may use: the GPU's memory on CUDA, else the RAM, or the container's limit if lower."""
    if cuda:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
        limit = f.read().strip()
        if limit.isdigit():
            return min(ram, int(limit))
    return int(ram)


def parse_memory(text: str) -> int:
    """'24GB', '24GiB', '512M', '1.5T' -> bytes. Decimal and binary spellings both count in powers of
    1024, as GPU memory is quoted ("a 24 GB card" has 24 GiB). A bare number is refused: 24 what?"""
    from tunelab.errors import TunelabError

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT])(?:I?B)?\s*", text.upper())
    if match is None:
        raise TunelabError(
            f"--memory {text!r}: expected a size with a unit", fix="e.g. --memory 24GB, 512MB or 1.5TB"
        )
    value = float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1)
    if value <= 0:
        raise TunelabError(f"--memory {text!r}: must be more than zero")
    return int(value)


# ---------------------------------------------------------------------------------------------
# The probe: a few real steps of the recipe's training


@dataclass(frozen=True)
class Probe:
    steps: int  # timed optimizer steps
    step_s: float  # mean wall time of one optimizer step (grad_accum micro-batches)
    tokens_per_s: float  # non-padding input tokens trained on per second
    peak_bytes: int  # CPU: resident-set high-water mark; CUDA: allocator peak + CUDA_CONTEXT_BYTES
    baseline_bytes: int  # CPU: resident set when the model was about to load; CUDA: CUDA_CONTEXT_BYTES
    device: str


def probe(recipe: Recipe, steps: int, *, data: PreparedData | None = None, tokenizer: Any = None) -> Probe:
    """Load the model as `train` does and run 2 + `steps` optimizer steps of the recipe's training.

    The first two steps take the longest training examples: the first allocates the gradients and
    AdamW's state, the second then reaches the peak a whole epoch would (its longest batch). Neither is
    timed. The timed steps take the recipe's own batches from evenly spread places in the epoch, so
    their mean stands for the epoch's. One process: under `train --nproc N` each of N holds about this.
    """
    import torch
    from accelerate.utils import set_seed

    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.models.load import load_tokenizer
    from tunelab.training.loop import TrainState, accumulate_gradients
    from tunelab.training.precision import make_accelerator

    if steps < 1:
        raise ValueError(f"probe steps must be at least 1, got {steps}")
    set_seed(recipe.train.seed)
    accelerator = make_accelerator(_precision(recipe).mixed_precision)
    if data is None:
        tokenizer = load_tokenizer(recipe.model)
        data = tokenize_records(recipe, load_records(recipe), tokenizer)
    cuda = accelerator.device.type == "cuda"
    baseline = _start_measuring(cuda)
    model, optimizer, scheduler, objective, batches = _training_pieces(recipe, data, tokenizer, accelerator)
    longest = batches.collate(_longest_rows(data.splits["train"], recipe.train.batch_size))
    for _ in range(2):
        accumulate_gradients(model, objective, [longest], accelerator)
        _step(model, optimizer, scheduler, recipe, accelerator)
    state, elapsed, tokens = TrainState(), 0.0, 0
    for i in range(steps):
        # Each timed step starts mid-way through its own equal share of the epoch, so a few steps
        # sample the whole of it: length-grouped batching puts the longest batch first on purpose.
        position = (2 * i + 1) * batches.per_epoch // (2 * steps)
        state.epoch, state.batch_in_epoch = 0, min(position, batches.per_epoch - 1)
        micro = [batches.next(state) for _ in range(recipe.train.grad_accum)]
        started = time.perf_counter()
        result = accumulate_gradients(model, objective, micro, accelerator)
        _step(model, optimizer, scheduler, recipe, accelerator)
        if cuda:
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - started
        tokens += result.tokens
    peak = baseline + int(torch.cuda.max_memory_allocated()) if cuda else peak_rss()
    return Probe(steps, elapsed / steps, tokens / max(elapsed, 1e-9), peak, baseline, accelerator.device.type)


def _start_measuring(cuda: bool) -> int:
    """The baseline, and the peak counter reset: from here on the peak is the probe's own."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        return CUDA_CONTEXT_BYTES
    reset_peak_rss()
    return current_rss()


def _training_pieces(recipe: Recipe, data: PreparedData, tokenizer: Any, accelerator: Any) -> tuple[Any, ...]:
    """Model, optimizer, scheduler, objective and batches, built by the same calls as `runner.train`."""
    from tunelab.data.packing import check_packing_supported
    from tunelab.models.load import load_model, quantisation_for
    from tunelab.models.methods import apply_method
    from tunelab.runner import _train_batches, build_objective
    from tunelab.training.precision import upcast_trainable
    from tunelab.training.schedule import build_optimizer, build_scheduler, total_steps
    from tunelab.training.speed import enable_gradient_checkpointing

    quantisation = quantisation_for(recipe.method.name, recipe.model.load_in_8bit)
    precision = _precision(recipe)
    loaded = load_model(
        recipe.model,
        recipe.task,
        data.label_map,
        tokenizer=tokenizer,
        quantisation=quantisation,
        dtype=precision.weights,
    )
    if recipe.train.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    # train.compile is not applied: the probe's few steps would time the compilation, not the training.
    model = apply_method(loaded.model, recipe.method, recipe.task, loaded.new_modules)
    upcast_trainable(model, precision)
    if data.packed:
        check_packing_supported(model)
    objective = build_objective(recipe, model, accelerator)
    batches, _ = _train_batches(recipe, data, loaded.tokenizer.pad_token_id, accelerator)
    optimizer = build_optimizer(model, recipe.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, recipe.train, total_steps(recipe.train, batches.per_epoch))
    model.train()
    return model, optimizer, scheduler, objective, batches


def _precision(recipe: Recipe) -> Any:
    import torch

    from tunelab.training.precision import resolve_precision

    return resolve_precision(recipe, "cuda" if torch.cuda.is_available() else "cpu")


def _weights_dtype(recipe: Recipe) -> Any:
    """The dtype `train` loads the model in (training/precision.py): float32 master weights for full
    and freeze, the compute dtype for an adapter method's frozen base."""
    return _precision(recipe).weights


def _activation_bytes(recipe: Recipe) -> int:
    precision = _precision(recipe)
    return int(
        precision.compute_dtype.itemsize if precision.compute != "fp32" else precision.weights.itemsize
    )


def _step(model: Any, optimizer: Any, scheduler: Any, recipe: Recipe, accelerator: Any) -> None:
    from tunelab.training.loop import _optimizer_step

    _optimizer_step(model, optimizer, scheduler, recipe.train, accelerator)


def row_tokens(example: dict[str, Any]) -> int:
    """Tokens in a training row: its input_ids, or the longer answer of a preference pair."""
    return max(len(value) for key, value in example.items() if key.endswith("input_ids"))


def _longest_rows(examples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return sorted(examples, key=row_tokens)[-count:]


# ---------------------------------------------------------------------------------------------
# Suggestions: what would make it fit, least change to the training result first

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
    if recipe.task == "pretrain":  # long documents are cut into chunks: no token is lost
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


# ---------------------------------------------------------------------------------------------
# plan: all of it for one recipe


@dataclass(frozen=True)
class PlanResult:
    recipe: Recipe
    device: str
    budget: int
    budget_source: str  # "--memory", "RAM" or "GPU memory"
    estimate: MemoryEstimate
    probe: Probe | None
    suggestions: list[Suggestion]
    steps_per_epoch: int
    total_steps: int
    notes: list[str] = field(default_factory=list)
    probe_out_of_memory: bool = False  # the probe hit CUDA's out-of-memory error: it does not fit

    @property
    def needed(self) -> int:
        """The larger of the estimate and the probe's measured peak."""
        return max(self.estimate.total, self.probe.peak_bytes if self.probe else 0)

    @property
    def fits(self) -> bool:
        return self.needed <= self.budget and not self.probe_out_of_memory


def plan(recipe: Recipe, memory_budget: int | None = None, probe_steps: int = 3) -> PlanResult:
    """Estimate, optionally probe (`probe_steps` > 0), and if it does not fit in `memory_budget` (default:
    the machine's RAM, or the GPU's memory on CUDA), suggest changes that would make it fit."""
    import torch

    from tunelab.data.pipeline import load_records, tokenize_records
    from tunelab.models.load import load_tokenizer, quantisation_for

    cuda = torch.cuda.is_available()
    tokenizer = load_tokenizer(recipe.model)
    data = tokenize_records(recipe, load_records(recipe), tokenizer)
    quantisation = quantisation_for(recipe.method.name, recipe.model.load_in_8bit)
    params, chunked, shape = method_facts(recipe, recipe.method, data.label_map, quantisation)
    # Measured now, before any weights: the imports `tunelab train` makes (the runner's; the model's
    # code and peft, brought in by the meta build) and the tokenised data. On CPU this is most of a
    # small model's footprint.
    overhead = CUDA_CONTEXT_BYTES if cuda else _process_baseline()
    estimate = estimate_memory(params, workload(recipe, shape, data, overhead, chunked, cuda))
    measured, note = _guarded_probe(recipe, probe_steps, data, tokenizer, estimate)
    budget = memory_budget or machine_memory(cuda)
    suggestions: list[Suggestion] = []
    if max(estimate.total, measured.peak_bytes if measured else 0) > budget:
        # Where the probe measured more than the estimate, suggestions must fit with that margin too.
        margin = max(0, measured.peak_bytes - estimate.total) if measured else 0
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
        probe=measured,
        suggestions=suggestions,
        steps_per_epoch=math.ceil(per_epoch / recipe.train.grad_accum),
        total_steps=_total_steps(recipe, per_epoch),
        notes=[note] if note else [],
        probe_out_of_memory=note == OUT_OF_MEMORY,
    )


OUT_OF_MEMORY = "the probe ran out of GPU memory: it does not fit on this GPU"


def _guarded_probe(
    recipe: Recipe, steps: int, data: PreparedData, tokenizer: Any, estimate: MemoryEstimate
) -> tuple[Probe | None, str | None]:
    """(the probe, a note) -- not tried where the estimate says this machine cannot hold it: on CPU the
    kernel would kill the process rather than raise."""
    import torch

    if steps < 1:
        return None, None
    if estimate.total > machine_memory(torch.cuda.is_available()):
        return None, "probe skipped: the estimate is more than this machine's memory"
    try:
        return probe(recipe, steps, data=data, tokenizer=tokenizer), None
    except torch.cuda.OutOfMemoryError:
        return None, OUT_OF_MEMORY


def _process_baseline() -> int:
    import tunelab.runner  # noqa: F401  (the training process imports it, and all it brings)

    return current_rss()


def method_facts(
    recipe: Recipe, method: Any, label_map: dict[str, int] | None, quantisation: Quantisation | None
) -> tuple[ParamFacts, bool, ModelShape]:
    """Build the model on the meta device, attach `method`, and count: (parameters, whether the fused
    loss applies, the model's shape). A quantised base is counted unquantised and then sized as
    bitsandbytes stores it (bitsandbytes cannot quantise meta tensors)."""
    from tunelab.config import LoraMethod
    from tunelab.models.methods import apply_method

    model, new_modules = meta_model(recipe, label_map)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    width = int(_config_value(config, "intermediate_size", "n_inner", "ffn_dim", default=-1))
    shape = model_shape(model.config, has_gated_mlp(model, width))
    if method.name == "qlora":  # apply_qlora wants a 4-bit model; the adapters are LoRA's all the same
        method = LoraMethod(**{**method.model_dump(), "name": "lora"})
    model = apply_method(model, method, recipe.task, new_modules)
    return param_facts(model, quantisation), fused_loss_applies(model, recipe.task), shape


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
    from tunelab.models.load import quantisation_for

    cfg, method, train = recipe.train, recipe.method, data.splits["train"]
    seq_len = max((row_tokens(e) for e in train), default=cfg.max_seq_len)
    if method.name == "prompt":  # the soft prompt's virtual tokens run through every block too
        seq_len += method.num_virtual_tokens
    quantised = quantisation_for(method.name, recipe.model.load_in_8bit) is not None
    return Workload(
        shape=shape,
        batch_size=min(cfg.batch_size, max(len(train), 1)),
        seq_len=seq_len,
        # A quantised base computes in bfloat16 but its norms (hence the residual stream) run in float32.
        # Under autocast the saved activations are mostly the matmuls' bf16 outputs.
        dtype_bytes=4 if quantised else _activation_bytes(recipe),
        grad_layers=method.k if method.name == "freeze" else shape.num_layers,
        rows_per_example=2 if recipe.task in ("preference", "reward") else 1,
        checkpointing=quantised or cfg.gradient_checkpointing,
        # CUDA's sdpa kernels apply attention dropout without materialising the probabilities.
        attention_probs=shape.eager_attention or (shape.attention_dropout > 0 and not cuda),
        causal_lm=recipe.task in ("sft", "pretrain", "preference"),
        chunked_loss=chunked_loss,
        reference_copy=recipe.task == "preference"
        and method.objective != "orpo"
        and method.name in ("full", "freeze"),
        overhead=overhead,
    )


def alternatives_for(recipe: Recipe, label_map: dict[str, int] | None, cuda: bool) -> list[Alternative]:
    """Leaner methods to suggest: LoRA instead of full/freeze; on CUDA also LoRA over an 8-bit base and
    QLoRA (bitsandbytes needs CUDA, and recipes using it are refused elsewhere)."""
    from tunelab.config import LoraMethod, QloraMethod

    name = recipe.method.name
    keep = {"objective": recipe.method.objective, "beta": recipe.method.beta}
    lora_fields = (
        recipe.method.model_dump() if name in ("lora", "dora", "qlora") else {**keep, "name": "lora"}
    )
    lora = LoraMethod(**{**lora_fields, "name": "lora"})
    wanted: list[tuple[str, Any, Quantisation | None, int, tuple[str, ...]]] = []
    if name in ("full", "freeze"):
        wanted.append(("lora", lora, None, FEWER_WEIGHTS, (_method_override(lora, recipe.task),)))
    if cuda and name in ("full", "freeze", "lora", "dora") and not recipe.model.load_in_8bit:
        over = (_method_override(lora, recipe.task), "model.load_in_8bit=true")
        wanted.append(("lora over an 8-bit base", lora, "8bit", QUANTISED, over))
        qlora = QloraMethod(**{**lora.model_dump(), "name": "qlora"})
        wanted.append(("qlora", qlora, "4bit", QUANTISED, (_method_override(qlora, recipe.task),)))
    found = []
    for label, method, quantisation, rank, overrides in wanted:
        params, chunked, _ = method_facts(recipe, method, label_map, quantisation)
        found.append(Alternative(label, overrides, params, quantisation is not None, chunked, rank))
    return found


def _method_override(method: Any, task: str) -> str:
    """`method={name: lora, r: 8, alpha: 16}`: the whole section, so a freeze recipe's `k` goes too."""
    keys = ["name", "r", "alpha"] + (["objective", "beta"] if task == "preference" else [])
    return "method={" + ", ".join(f"{key}: {getattr(method, key)}" for key in keys) + "}"


def _micro_batches_per_epoch(recipe: Recipe, data: PreparedData, tokenizer: Any) -> int:
    from types import SimpleNamespace

    from tunelab.runner import _train_batches

    one_process = SimpleNamespace(num_processes=1, process_index=0, device="cpu")
    batches, _ = _train_batches(recipe, data, tokenizer.pad_token_id or 0, one_process)
    return int(batches.per_epoch)


def _total_steps(recipe: Recipe, per_epoch: int) -> int:
    from tunelab.training.schedule import total_steps

    return total_steps(recipe.train, per_epoch)


# ---------------------------------------------------------------------------------------------
# The terminal


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
    console.print(_verdict(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.suggestions:
        console.print(_suggestion_table(result.suggestions))
    console.print(_timing(result))


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
