"""The recipe: one YAML file that drives a whole run.

Every section is a pydantic model with `extra="forbid"` and a description on every field, so a typo
is an error rather than a silently ignored key. `load_recipe` collects *every* problem at once and
reports each with its YAML path, e.g. ``train.lr: must be > 0, got -1``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tunelab.errors import RecipeError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _existing_file(value: str) -> str:
    """Data paths must exist when the recipe is validated, so a typo fails before any model loads.
    Hub datasets (hf:org/name[@revision][:split]) are checked for form here and fetched at load time."""
    if value.startswith("hf:"):
        from tunelab.data.hub import parse_spec
        from tunelab.errors import DataError

        try:
            parse_spec(value)
        except DataError as exc:
            raise ValueError(f"{exc.message}; {exc.fix}") from None
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"file not found: {path.resolve()} (relative paths are resolved from the current directory)"
        )
    return str(path)


ExistingFile = Annotated[str, AfterValidator(_existing_file)]


class ModelConfig(Section):
    name: str = Field(description="Hugging Face Hub id (org/name) or a local folder holding the model.")
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
    load_in_8bit: bool = Field(
        False, description="Load the frozen base in 8-bit (bitsandbytes; needs CUDA) under an adapter method."
    )


DataFormat = Literal[
    "auto",
    "chat",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "labeled",
    "multiple_choice",
    "preference",
]


class NearDedup(Section):
    # Off by default within train: datasets such as SST-2 hold sub-phrases of one sentence as separate,
    # labelled examples, and near-dedup would remove a third of them. The leakage check between train and
    # held-out data always matches near-duplicates with these settings.
    enabled: bool = Field(
        False, description="Also remove near-duplicates within train (MinHash LSH over character shingles)."
    )
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Estimated Jaccard similarity at or above which two texts are near-duplicates.",
    )
    shingle_size: int = Field(
        5, ge=1, description="Characters per shingle (5 suits short texts and long ones)."
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more is more precise and slower.")


class SplitRatios(Section):
    validation: float = Field(
        0.0, ge=0, lt=1, description="Share of train held out as validation when no file."
    )
    test: float = Field(0.0, ge=0, lt=1, description="Share of train held out as test when no file is given.")


class TrainSource(Section):
    path: ExistingFile = Field(description="A training file (any supported format) or hf: dataset.")
    format: DataFormat | None = Field(None, description="This file's format; default: data.format.")
    weight: float = Field(
        1.0, gt=0, description="Sampling weight: the share of draws is proportional to weight x rows."
    )
    task_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Name used in per-dataset metrics (val_<task_name>_loss); default: the file's stem.",
    )
    validation: ExistingFile | None = Field(
        None, description="This dataset's own validation file (else data.split.validation of its rows)."
    )
    test: ExistingFile | None = Field(
        None, description="This dataset's own test file (else data.split.test of its rows)."
    )


class Replay(Section):
    path: ExistingFile = Field(
        description="General text or instructions to keep rehearsing (against forgetting)."
    )
    format: DataFormat | None = Field(None, description="The replay file's format; default: auto.")
    ratio: float | None = Field(
        None, gt=0, lt=1, description="Share of training draws taken from the replay data."
    )


class Progressive(Section):
    start: float = Field(gt=0, le=1, description="New tasks' share of draws at the first step.")
    end: float = Field(gt=0, le=1, description="New tasks' share of draws at the last step.")


class Mixing(Section):
    strategy: Literal["proportional", "temperature"] = Field(
        "proportional",
        description="proportional: draws follow weight x rows; temperature: (weight x rows)^(1/T), "
        "which lifts small datasets.",
    )
    temperature: float = Field(2.0, ge=1, description="T of the temperature strategy (1 = proportional).")


class DataConfig(Section):
    train: ExistingFile | list[TrainSource] = Field(
        description="Training data: .jsonl, .json, .csv, .tsv, .parquet or .txt (.gz too); or a list of "
        "datasets {path, format, weight, task_name} mixed for multi-task training."
    )
    validation: ExistingFile | None = Field(
        None, description="Validation file, evaluated every train.eval_every."
    )
    test: ExistingFile | None = Field(None, description="Test file, evaluated before and after training.")
    format: DataFormat = Field(
        "auto", description="Input format; auto detects it from the fields of the first rows."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename source columns to the format's fields, e.g. {prompt: dialogue, completion: summary}.",
    )
    text_unit: Literal["line", "file"] = Field(
        "line", description=".txt files: one document per line or per file."
    )
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="classify: a name for each label as written in the data, e.g. {0: negative, 1: positive}. "
        "The run, its report and the zero-shot baseline then use the names.",
    )

    @field_validator("label_names", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        # Labels are read as text ("0", "1"), and YAML makes `0: negative` an integer key.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    text_column: str = Field("text", description="labeled/text formats: the column holding the text.")
    text_pair_column: str | None = Field(None, description="labeled: optional second text column (pairs).")
    label_column: str = Field("label", description="labeled: the column holding the label.")
    sample: int | None = Field(
        None,
        gt=0,
        description="Train on a seeded random sample of this many training rows (recorded in report.json).",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="Bad rows: fail lists them and stops; skip leaves them out and counts them."
    )
    normalize: bool = Field(
        True,
        description="Lossless only: line breaks as \\n, control characters removed, Unicode NFC. Whitespace "
        "(indentation, tabs, runs of spaces, blank lines) is kept as written.",
    )
    dedup: bool = Field(
        True, description="Remove exact duplicates (after normalisation, ignoring case) from train."
    )
    near_dedup: NearDedup = Field(default_factory=NearDedup, description="Near-duplicate removal from train.")
    pii: Literal["off", "mask", "drop", "report"] = Field(
        "report",
        description="Emails, phones, cards, IPs, IBANs: mask with <EMAIL>-style placeholders, drop the row, "
        "or only count them (report).",
    )
    min_tokens: int = Field(1, ge=0, description="Drop examples shorter than this many tokens (counted).")
    max_tokens: int | None = Field(
        None, gt=0, description="Drop examples longer than this many tokens before truncation (counted)."
    )
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="Examples over train.max_seq_len: cut at the limit, or leave out (counted)."
    )
    template: Literal["auto", "chatml", "llama3", "alpaca"] = Field(
        "auto", description="Chat template: auto uses the tokenizer's own, else chatml."
    )
    balance: Literal["none", "oversample", "undersample"] = Field(
        "none", description="classify: even out label counts in train by repeating or leaving out examples."
    )
    split: SplitRatios = Field(
        default_factory=SplitRatios, description="Hold-out shares when files are missing."
    )
    leakage: Literal["drop", "fail"] = Field(
        "drop",
        description="Train rows that (near-)duplicate validation/test/contamination rows: drop or fail.",
    )
    contamination: list[ExistingFile] = Field(
        default_factory=list, description="Extra files (e.g. a benchmark) that train must not overlap."
    )
    mixing: Mixing = Field(default_factory=Mixing, description="How several training datasets are sampled.")
    replay: Replay | None = Field(
        None, description="General data mixed into training at replay.ratio, against forgetting."
    )
    progressive: Progressive | None = Field(
        None,
        description="Ramp the new tasks' share of draws from start to end over training; replay gets the rest.",
    )

    @property
    def sources(self) -> list[TrainSource]:
        """The training datasets as a list, one entry when data.train is a single file."""
        if isinstance(self.train, str):
            return [TrainSource(path=self.train)]
        return list(self.train)

    @property
    def multi_source(self) -> bool:
        return not isinstance(self.train, str) or self.replay is not None


class MethodBase(Section):
    # Preference tuning's settings live with the method, as the recipe reads `method.objective: dpo`.
    objective: Literal["dpo", "ipo", "orpo"] = Field(
        "dpo",
        description="task preference: dpo (sigmoid), ipo (squared, length-averaged) or orpo (no reference).",
    )
    beta: float = Field(
        0.1, gt=0, description="task preference: strength of the pull towards the reference (orpo: lambda)."
    )


class FullMethod(MethodBase):
    name: Literal["full"] = Field(description="Train every weight of the model.")


class FreezeMethod(MethodBase):
    name: Literal["freeze"] = Field(description="Train only the top k blocks plus the head.")
    k: int = Field(ge=0, description="How many of the top transformer blocks to train (0: head only).")


class LoraMethod(MethodBase):
    name: Literal["lora"] = Field(description="Low-rank adapters through peft; the base stays frozen.")
    r: int = Field(8, gt=0, description="Rank of the LoRA update matrices.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="Module names to adapt; auto: every linear layer except the output head.",
    )


class DoraMethod(LoraMethod):
    name: Literal["dora"] = Field(  # type: ignore[assignment]
        description="Weight-decomposed LoRA (DoRA): LoRA on the direction, a trained magnitude per column."
    )


class QloraMethod(LoraMethod):
    name: Literal["qlora"] = Field(  # type: ignore[assignment]
        description="LoRA over a 4-bit NF4 base with double quantisation (bitsandbytes; needs CUDA)."
    )


class Ia3Method(MethodBase):
    name: Literal["ia3"] = Field(description="(IA)3: learned vectors that rescale keys, values and the MLP.")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto", description="Modules to rescale; auto: peft's table for the architecture."
    )
    feedforward_modules: Literal["auto"] | list[str] = Field(
        "auto", description="Which of target_modules are MLP layers (their input is rescaled)."
    )


class PrefixMethod(MethodBase):
    name: Literal["prefix"] = Field(description="Prefix tuning: trained key/value prefixes in every layer.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained prefix.")
    projection: bool = Field(
        False, description="Reparameterise the prefix through an MLP (more stable, more to train)."
    )


class PromptMethod(MethodBase):
    name: Literal["prompt"] = Field(description="Prompt tuning: trained soft-prompt embeddings.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained soft prompt.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's embeddings (else random)."
    )


class AdapterMethod(MethodBase):
    name: Literal["adapter"] = Field(
        description="Bottleneck adapters (Houlsby) after each block's attention and MLP; the base stays frozen."
    )
    reduction_factor: int = Field(16, gt=0, description="hidden size / adapter bottleneck size.")
    non_linearity: Literal["relu", "gelu", "silu"] = Field("relu", description="The bottleneck's activation.")


# A small explicit registry: the `name` field picks the class. No import strings in user YAML.
MethodConfig = Annotated[
    FullMethod
    | FreezeMethod
    | LoraMethod
    | DoraMethod
    | QloraMethod
    | Ia3Method
    | PrefixMethod
    | PromptMethod
    | AdapterMethod,
    Field(discriminator="name"),
]
METHOD_CLASSES: dict[str, type[Section]] = {
    "full": FullMethod,
    "freeze": FreezeMethod,
    "lora": LoraMethod,
    "dora": DoraMethod,
    "qlora": QloraMethod,
    "ia3": Ia3Method,
    "prefix": PrefixMethod,
    "prompt": PromptMethod,
    "adapter": AdapterMethod,
}
METHOD_NAMES = tuple(METHOD_CLASSES)
ADAPTER_METHODS = ("lora", "dora", "qlora", "ia3", "prefix", "prompt", "adapter")  # the base stays frozen
# Methods that can train embedding rows for tokens added to the vocabulary (a chat template's markers):
# full trains every row; the LoRA family trains just those rows (peft's trainable_token_indices).
NEW_TOKEN_METHODS = ("full", "lora", "dora", "qlora")


class EarlyStopping(Section):
    metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="Validation metric to watch (val_accuracy: classify only)."
    )
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")


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
        "of batches stays random.",
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop when a validation metric stops improving, e.g. {metric: val_loss, patience: 3}.",
    )
    seed: int = Field(42, description="Seed for initialisation, data order and dropout.")
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

    @field_validator("label_descriptions", mode="before")
    @classmethod
    def _label_names_as_text(cls, value: Any) -> Any:
        # Labels are read as text ("0", "1"), and YAML makes `0: negative` an integer key.
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders (runs/<name>-<timestamp>/).")


class Recipe(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name; letters, digits, '.', '_' and '-'. Used in the run folder's name.",
    )
    task: Literal["sft", "classify", "pretrain", "preference", "reward"] = Field(
        description="sft: chat/instruction tuning, loss on assistant tokens. classify: sequence classification. "
        "pretrain: continued pre-training on text, loss on every token. preference: DPO/IPO/ORPO on chosen "
        "and rejected answers. reward: a scalar reward model trained on preference pairs."
    )
    model: ModelConfig = Field(description="The pre-trained model to start from.")
    data: DataConfig = Field(description="Where the data is and which columns to read.")
    method: MethodConfig = Field(
        description="Which weights move: full, freeze, lora, dora, qlora, ia3, prefix, prompt or adapter."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop's settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Baselines scored beside the result.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where run folders go.")

    @model_validator(mode="after")
    def _cross_field_checks(self) -> Recipe:
        stopping = self.train.early_stopping
        if stopping is not None and self.data.validation is None:
            raise ValueError("train.early_stopping needs data.validation to watch")
        if stopping is not None and stopping.metric == "val_accuracy" and self.task != "classify":
            raise ValueError("train.early_stopping.metric val_accuracy exists only for task: classify")
        if self.eval.reference is not None and self.task not in CAUSAL_TASKS:
            raise ValueError(
                "eval.reference (the forgetting check) needs a causal language model: "
                f"task {', '.join(CAUSAL_TASKS)}"
            )
        _check_method(self)
        _check_precision(self)
        _check_data_sources(self)
        return self

    @property
    def packing(self) -> bool:
        """Whether train rows are packed: train.packing, else on for pretrain (unless the method
        prepends virtual tokens, whose 2-D mask peft cannot join to the packed 4-D one)."""
        if self.train.packing is not None:
            return self.train.packing and self.task in ("sft", "pretrain")
        return self.task == "pretrain" and self.method.name not in VIRTUAL_TOKEN_METHODS


CAUSAL_TASKS = ("sft", "pretrain", "preference")
VIRTUAL_TOKEN_METHODS = ("prefix", "prompt")


def _check_method(recipe: Recipe) -> None:
    method, task = recipe.method, recipe.task
    # Checked by value, not by "was it written": a saved recipe.yaml spells out every default.
    changed = [
        key for key in ("beta", "objective") if getattr(method, key) != MethodBase.model_fields[key].default
    ]
    if changed and task != "preference":
        raise ValueError(f"method.{changed[0]} applies to task: preference only")
    if task == "reward" and method.name in VIRTUAL_TOKEN_METHODS:
        raise ValueError(f"method {method.name} is not supported for task reward; use lora or full")
    if recipe.train.packing and method.name in VIRTUAL_TOKEN_METHODS:
        raise ValueError(
            f"train.packing: method {method.name} prepends virtual tokens, which peft cannot combine with "
            "packed rows; set train.packing: false"
        )
    quantised = "qlora (a 4-bit base)" if method.name == "qlora" else None
    if recipe.model.load_in_8bit:
        if method.name not in ADAPTER_METHODS or method.name == "qlora":
            raise ValueError(
                "model.load_in_8bit: an 8-bit base cannot be trained itself; use it with lora, dora or ia3"
            )
        quantised = "model.load_in_8bit"
    if quantised is not None:
        _check_quantisation_available(quantised)


def _check_precision(recipe: Recipe) -> None:
    import torch

    if recipe.train.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.precision fp16 needs a CUDA GPU (loss scaling); on CPU use fp32 or bf16")


def _check_quantisation_available(what: str) -> None:
    """Quantised bases need bitsandbytes kernels, which need CUDA: fail at validation, not mid-load."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            f"{what} quantises the base with bitsandbytes, which needs a CUDA GPU, and none is visible; "
            "on CPU use method lora (same adapters over a full-precision base)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{what} needs the bitsandbytes package: pip install bitsandbytes")


def _check_data_sources(recipe: Recipe) -> None:
    data = recipe.data
    if isinstance(data.train, list):
        if recipe.task not in ("sft", "pretrain"):
            raise ValueError("data.train as a list of datasets (multi-task) is for task sft or pretrain")
        if not data.train:
            raise ValueError("data.train: the list of datasets is empty")
        names = [source_name(s) for s in data.train]
        if len(set(names)) != len(names):
            raise ValueError(f"data.train: two datasets share a task_name ({', '.join(names)}); name them")
    if data.replay is not None and recipe.task not in ("sft", "pretrain"):
        raise ValueError("data.replay is for task sft or pretrain")
    if data.replay is not None and (data.replay.ratio is None) == (data.progressive is None):
        raise ValueError(
            "data.replay: set either replay.ratio (a constant share) or data.progressive (a ramp)"
        )
    if data.progressive is not None and data.replay is None:
        raise ValueError("data.progressive ramps new tasks against replay data: set data.replay.path")


def source_name(source: TrainSource) -> str:
    """A dataset's name in metrics: its task_name, else the file's stem (`hf:` specs: the dataset name)."""
    if source.task_name:
        return source.task_name
    stem = source.path.split(":", 1)[-1] if source.path.startswith("hf:") else Path(source.path).name
    return stem.split("/")[-1].split("@")[0].split(".")[0] or "train"


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error formatting


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError listing every problem."""
    raw = _read_yaml(Path(path))
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [_format_error(err) for err in _without_unchosen_branches(exc.errors())]
        noun = "problem" if len(problems) == 1 else "problems"
        raise RecipeError(
            f"{path}: {len(problems)} {noun}",
            problems=problems,
            fix=f"correct the recipe (or override with --set KEY=VALUE); `tunelab validate {path}` re-checks it",
        ) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path.resolve()}", fix="check the path to the YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}{line}: not valid YAML: {reason}") from None
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: a recipe is a YAML mapping (name: ..., task: ...), got {type(raw).__name__}"
        )
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value`; the value is parsed as YAML so numbers, booleans and null keep their type."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {override!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    *parents, leaf = key.strip().split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise RecipeError(f"--set {key}: {where} is a value, not a section")
        node = child
    node[leaf] = _parse_scalar(text)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


TYPE_MISMATCH = {"string_type", "list_type", "dict_type", "model_type", "model_attributes_type"}


def _is_branch(part: Any) -> bool:
    """pydantic names the union member it tried inside the loc: 'function-after[...]', 'list[TrainSource]'."""
    if part == "[key]":  # a dict key that failed, not a union member
        return False
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _without_unchosen_branches(errors: list[Any]) -> list[Any]:
    """For a union field (data.train: a file or a list), report the branch the user meant: drop
    "not a list" when they wrote a path and the path is wrong, and vice versa."""
    by_field: dict[tuple[Any, ...], list[Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        cut = next((i for i, part in enumerate(loc) if _is_branch(part)), None)
        by_field.setdefault(loc[:cut] if cut is not None else loc, []).append(err)
    kept: list[Any] = []
    for field, errs in by_field.items():
        branchy = [e for e in errs if any(_is_branch(p) for p in e["loc"])]
        if not branchy:
            kept.extend(errs)
            continue
        meant = [e for e in branchy if e["type"] not in TYPE_MISMATCH]
        if meant:
            kept.extend({**e, "loc": tuple(p for p in e["loc"] if not _is_branch(p))} for e in meant)
        else:  # a value of no accepted type at all: one message naming the accepted types
            kept.append(
                {"loc": field, "type": "union_type", "msg": "wrong type", "input": errs[0].get("input")}
            )
    return kept


def _yaml_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        # pydantic puts the discriminator's value into the path (method.lora.r); users wrote method.r.
        if i > 0 and loc[i - 1] == "method" and part in METHOD_NAMES:
            continue
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        if part in METHOD_NAMES:
            model = METHOD_CLASSES[part]
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [c for c in candidates if issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _format_error(err: Any) -> str:
    loc = tuple(err["loc"])
    path = _yaml_path(loc)
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    if loc and loc[-1] == "[key]":
        return f"{_yaml_path(loc[:-1])}: the key {got!r} must be text: {err['msg'].lower()}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path}: unknown key{hint}; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{path}: required, but missing"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[
            kind
        ]
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{path}: must be {op} {bound}, got {got!r}"
    if kind == "literal_error":
        return f"{path}: must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "union_tag_invalid":
        return f"{path}: unknown method {ctx.get('tag')!r}; must be one of {', '.join(METHOD_NAMES)}"
    if kind == "union_type":
        return f"{path}: must be a file path or a list of datasets ({{path, weight, ...}}), got {got!r}"
    if kind == "union_tag_not_found":
        return f"{path}: needs a name ({', '.join(METHOD_NAMES)})"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        return f"{path}: {message}" if loc else message
    return f"{path}: {err['msg'].lower()}, got {got!r}"
