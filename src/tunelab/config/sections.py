"""The recipe's sections, field by field: pydantic models with `extra="forbid"` and a description on
every field, so a typo is an error rather than a silently ignored key. Checks across fields are in
checks.py; the method section's schemas are the registered methods' (tunelab.methods); the data section
is in data_section.py (re-exported here).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tunelab.config.base import Section
from tunelab.config.data_section import (  # noqa: F401  (re-exported: the recipe's sections, in one place)
    BUILTIN_TEMPLATE_NAMES,
    DataConfig,
    DataFormat,
    ExistingFile,
    Mixing,
    NearDedup,
    Progressive,
    Replay,
    SplitRatios,
    TrainSource,
)
from tunelab.config.directions import better
from tunelab.config.safety import BiasConfig, Canaries, PrivacyConfig


class ModelConfig(Section):
    name: str = Field(
        description="Hugging Face Hub id (org/name), a local folder holding the model, or a .gguf file."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weight dtype as loaded. auto: float32 when the base weights train (full, freeze: the "
        "master copy under mixed precision); for adapter methods, the compute dtype of train.precision "
        "(the frozen base in bf16 where bf16 is fast).",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you trust its author."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    hub_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$",  # org/name, as the Hub spells ids
        description="The base's Hugging Face Hub id, for model cards (base_model) when model.name is a local "
        "folder or a .gguf file whose metadata names none.",
    )
    load_in_8bit: bool = Field(
        False, description="Load the frozen base in 8-bit (bitsandbytes; needs CUDA) under an adapter method."
    )
    # Not checked for existence here, unlike data files: the run it names may be the one a first
    # recipe is about to make. Loading the model checks it (models/base_adapter.py).
    adapter: str | None = Field(
        None,
        description="A finished run of model.name (its folder or final/) whose adapter (lora, dora, ia3) is "
        "merged into the weights as they load, before this run's method attaches: DPO or KTO from an sft "
        "run, which is then also their reference model. Its saved tokenizer is used.",
    )


class EarlyStopping(Section):
    # Any name is read here; checks.py refuses one the task's validation pass does not log.
    metric: str = Field(
        "val_loss",
        description="The validation metric to watch, one the task logs at each validation pass: val_loss; "
        "val_perplexity (sft, pretrain); val_accuracy (classify; token_classify: per word); "
        "val_entity_f1, _precision, _recall (token_classify); val_reward_accuracy, val_reward_margin (reward, "
        "preference); with eval.metrics (sft, seq2seq) the scores of answers generated at each validation "
        "pass: val_exact_match, val_rougeL, val_bleu, ...; val_<dataset>_loss in a multi-dataset run. Lower "
        "is better for losses and perplexities, higher for the others.",
    )
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")

    @property
    def higher_is_better(self) -> bool:
        """The metric's direction, from the one table of them (directions.BETTER)."""
        direction = better(self.metric)
        if direction is None:
            raise ValueError(f"train.early_stopping.metric: {self.metric} has no direction that means better")
        return direction == "higher"


class TrainConfig(Section):
    epochs: float = Field(3, gt=0, description="Passes over the training data (ignored if max_steps).")
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps to run; overrides epochs.")
    batch_size: int = Field(16, gt=0, description="Examples per micro-batch (per device).")
    grad_accum: int = Field(1, gt=0, description="Micro-batches accumulated into one optimizer step.")
    lr: float = Field(2.0e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases/norms).")
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="Learning-rate schedule after warmup."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip gradients to this norm; null: off.")
    max_seq_len: int = Field(512, gt=0, description="Tokens per example; longer examples are truncated.")
    eval_every: int = Field(100, gt=0, description="Evaluate on data.validation every this many steps.")
    save_every: int = Field(100, gt=0, description="Write a checkpoint every this many steps.")
    keep_last: int = Field(2, ge=1, description="Checkpoints to keep; older ones are deleted.")
    log_every: int = Field(10, gt=0, description="Write a metrics.jsonl line every this many steps.")
    packing: bool | None = Field(
        None,
        description="sft/pretrain: pack examples into max_seq_len rows; attention never crosses examples. "
        "Default: on for pretrain, off otherwise.",
    )
    group_by_length: bool = Field(
        True,
        description="Unpacked batches: put examples of similar length together (less padding); the order "
        "of batches stays random. Not for kto, whose KL estimate needs batches of mixed examples.",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop when a validation metric stops improving, e.g. {metric: val_loss, patience: 3}.",
    )
    seed: int = Field(42, description="Seed for initialisation, data order and dropout.")
    privacy: PrivacyConfig | None = Field(
        None,
        description="Differential privacy (DP-SGD), e.g. {target_epsilon: 8}: batches are Poisson-sampled "
        "(batch_size x grad_accum examples expected per step, batch_size at most per micro-batch).",
    )
    class_weights: Literal["none", "auto"] = Field(
        "none",
        description="classify: auto weighs each class's loss by its inverse frequency in train (counted "
        "after data.balance), so a rare class counts as much as a common one.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Matmul precision (autocast; trainable weights stay float32). auto: bf16 where the "
        "hardware has fast bf16 (CUDA compute capability 8+, CPUs with AVX512-BF16/AMX), else fp32. "
        "fp16 (with loss scaling) needs CUDA.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each block's activations in backward instead of keeping them: about a "
        "third more compute for activation memory of one block per layer.",
    )
    compile: bool = Field(
        False,
        description="torch.compile each transformer block (inductor; one compile serves every layer). The "
        "first steps pay the compile time; best for long runs with packing, whose shapes repeat.",
    )
    distributed: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp",
        description="With `tunelab train --nproc N`: ddp (replicas; gloo on CPU, NCCL on CUDA), fsdp or "
        "deepspeed (sharded; CUDA), using the accelerate configs in recipes/accelerate/.",
    )
    deepspeed_stage: Literal[2, 3] = Field(
        2, description="train.distributed deepspeed: ZeRO stage 2 (optimizer + gradients) or 3 (+ weights)."
    )


Baseline = Literal["zero_shot", "few_shot"]
GenerativeMetric = Literal["exact_match", "rouge", "bleu", "chrf", "tool_calls"]  # evaluation/generative.py
BASELINES: tuple[Baseline, ...] = ("zero_shot", "few_shot")


class EvalConfig(Section):
    baselines: list[Baseline] = Field(
        default_factory=lambda: list(BASELINES),
        description="Base-model baselines scored beside the fine-tuned model (classify: encoder "
        "similarity to label names, nearest centroid of few_shot_k examples per class).",
    )
    few_shot_k: int = Field(3, ge=1, description="Labelled examples per class (or prior turns) for few-shot.")
    label_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description="classify zero-shot: a description per label name, instead of the name.",
    )
    reference: ExistingFile | None = Field(
        None,
        description="Forgetting check (sft): general text (perplexity) or multiple-choice JSONL (question, "
        "choices, answer; accuracy), scored before and after training.",
    )
    forgetting_tolerance: float = Field(
        0.05,
        ge=0,
        description="Warn when the reference score gets worse by more than this share (0.05 = 5%).",
    )
    metrics: list[GenerativeMetric] = Field(
        default_factory=list,
        description="sft: generate answers to the test split (else validation) with the base model "
        "(zero- and few-shot) and the fine-tuned one, and score them: exact_match, rouge, bleu, chrf; "
        "tool_calls: the calls parsed from each answer against the reference's (function-name accuracy, "
        "argument exact match and F1, unparsed share). Every answer is kept in generations.jsonl.",
    )
    max_new_tokens: int = Field(128, ge=1, description="Longest generated answer eval.metrics scores.")
    show_examples: int = Field(
        1, ge=0, description="Answers printed before and after training (a seeded draw, not the best)."
    )
    bias: BiasConfig | None = Field(
        None,
        description="classify: a bias report: identity-term mentions against labels in train, and per-subgroup "
        "accuracy and AUCs (subgroup, BPSN, BNSP) of the fine-tuned model on the held-out split.",
    )
    canaries: Canaries | None = Field(
        None,
        description="sft/pretrain: a memorisation audit. Random secrets are put in train at chosen repetition "
        "counts; after training each one's exposure and whether greedy decoding recites it are measured.",
    )

    @field_validator("label_descriptions", mode="before")
    @classmethod
    def _label_names_as_text(cls, value: Any) -> Any:
        # Labels are read as text ("0", "1"), and YAML makes `0: negative` an integer key.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


Tracker = Literal["tensorboard", "mlflow", "wandb"]


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders (runs/<name>-<timestamp>/).")
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Labels kept with the run in summary.json and the registry (`tunelab runs list --tag "
        "k=v`); `tunelab tune` tags each trial with its study and number.",
    )
    trackers: list[Tracker] = Field(
        default_factory=lambda: list[Tracker](["tensorboard"]),
        description="Where the loop's metrics also go: tensorboard (the run folder), mlflow (output.mlflow_uri), "
        "wandb (offline without WANDB_API_KEY). mlflow and wandb need their package installed.",
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (a server, or sqlite:///...); default <output.dir>/mlflow.db."
    )

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_values_as_text(cls, value: Any) -> Any:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value


class PreferenceConfig(Section):
    """task preference's loss; a section of its own, so setting it for another task is an error."""

    objective: Literal["dpo", "ipo", "orpo", "kto"] = Field(
        "dpo",
        description="dpo (sigmoid), ipo (squared, length-averaged), orpo (no reference model) or kto "
        "(answers rated desirable or not, unpaired; pairs are read as one of each).",
    )
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (orpo: lambda).")
    desirable_weight: float = Field(
        1.0,
        gt=0,
        description="kto: weight of each desirable example's loss; raise the rarer kind's weight so that "
        "weight x count is within 1:1 to 4:3 of the other's (the KTO paper's advice).",
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="kto: weight of each undesirable example's loss (see desirable_weight)."
    )
