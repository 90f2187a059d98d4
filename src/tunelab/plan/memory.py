"""The memory estimate: pure arithmetic from the model's shape, its parameters and the batch.

Memory is what tunelab's training loop allocates, not a generic formula: the weights train in their
loaded dtype without autocast (float32 on CPU, bfloat16 on a CUDA GPU that supports it), and torch's AdamW
keeps its two moments in the parameter's dtype, so there are no float32 master weights unless
`master_weights` says so (a DeepSpeed/apex-style mixed-precision setup).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
# The whole `tunelab train` process: training is one phase of several. The baselines score the base
# model before training, and every evaluation scores the model while its optimizer state is held; with a
# long validation set or few-shot contexts filling max_seq_len, one of those can be the process's peak.

# A no-grad forward keeps one block's intermediates at a time: its input, q/k/v and attention output,
# and the MLP's projections (a gated MLP holds gate, up and their product).
SCORING_HIDDEN_ELEMENTS_PER_TOKEN = 6
SCORING_MLP_ELEMENTS_PER_TOKEN = 3
# Scoring's loss holds the logits in their dtype, their float32 copy and log-softmax's output.
SCORING_LOSS_FLOAT32_BUFFERS = 2


@dataclass(frozen=True)
class Scoring:
    """A no-grad pass: `rows` x `seq_len` tokens through the model (evaluation or a baseline)."""

    rows: int
    seq_len: int
    what: str  # for the plan's table: "evaluation: 8 validation rows x 120 tokens"


@dataclass(frozen=True)
class RunEstimate:
    """The process's peak over the phases of `tunelab train`, by phase (bytes)."""

    phases: dict[str, int]  # "training", and "evaluation" / "baselines" where the run has them
    scoring: dict[str, Scoring]  # the no-grad pass each scoring phase was sized for

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)


def scoring_bytes(work: Workload, scoring: Scoring) -> int:
    """The transient memory of one no-grad pass: one block's intermediates and the loss's buffers."""
    shape, tokens = work.shape, scoring.rows * scoring.seq_len
    mlp = SCORING_MLP_ELEMENTS_PER_TOKEN * shape.intermediate_size
    block = tokens * (SCORING_HIDDEN_ELEMENTS_PER_TOKEN * shape.hidden_size + mlp) * work.dtype_bytes
    if not work.causal_lm:
        return int(block)
    if work.chunked_loss:
        return int(block + min(tokens, LOSS_CHUNK_TOKENS) * shape.vocab_size * 4)
    return int(block + tokens * shape.vocab_size * (work.dtype_bytes + SCORING_LOSS_FLOAT32_BUFFERS * 4))


def estimate_run(
    training: MemoryEstimate, evaluation: Scoring | None, baselines: Scoring | None
) -> RunEstimate:
    """Training's peak beside the scoring phases': evaluation holds the weights and the optimizer state
    (gradients are freed after each step), the baselines only the base model's weights."""
    phases = {"training": training.total}
    scoring: dict[str, Scoring] = {}
    if evaluation is not None:
        held = training.weights + training.optimizer + training.overhead
        phases["evaluation"] = held + scoring_bytes(training.work, evaluation)
        scoring["evaluation"] = evaluation
    if baselines is not None:
        held = training.params.weight_bytes + training.overhead
        phases["baselines"] = held + scoring_bytes(training.work, baselines)
        scoring["baselines"] = baselines
    return RunEstimate(phases=phases, scoring=scoring)
