"""The recipe's sections, field by field: pydantic models with `extra="forbid"` and a description on
every field, so a typo is an error rather than a silently ignored key. Checks across fields are in
checks.py; the method section's schemas are the registered methods' (tunelab.methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from tunelab.config.base import Section
from tunelab.config.directions import better
from tunelab.config.safety import AugmentConfig, BiasConfig, Canaries, ContentScreen, PrivacyConfig


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

BUILTIN_TEMPLATE_NAMES = ("auto", "chatml", "llama3", "alpaca")


def _chat_template(value: str) -> str:
    """A built-in template's name, or a Jinja file that parses (its syntax errors named by file:line)."""
    if value in BUILTIN_TEMPLATE_NAMES:
        return value
    if not Path(value).expanduser().is_file():
        raise ValueError(
            f"{value!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATE_NAMES)}) nor a file: "
            f"{Path(value).expanduser().resolve()} not found"
        )
    path = _existing_file(value)
    import jinja2

    try:
        jinja2.Environment().parse(Path(path).read_text(encoding="utf-8"))
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not a valid Jinja template: {exc.message}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text, so not a Jinja template") from None
    return path


ChatTemplate = Annotated[str, AfterValidator(_chat_template)]


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
    "openai_preference",  # OpenAI's DPO rows: {input: {messages}, preferred_output, non_preferred_output}
    "kto",  # {prompt, completion, label: true|false} rows (preference.objective: kto)
    "hh_dialogue",  # an HH-RLHF transcript in `dialogue` as a chat (data.columns: {dialogue: chosen})
    "tagged",  # {tokens, tags} rows (token_classify)
    "conll",  # a token and its tags per line, sentences between blank lines (token_classify)
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
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="The dataset's name in per-dataset metrics (val_<name>_loss, mix/<name>); default: "
        "the file's stem.",
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
        "datasets {path, format, weight, name} mixed for multi-task training."
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
    prompt_template: str | None = Field(
        None,
        description="prompt/completion rows (and columns renamed to them): the user message, written from "
        "the row's fields, e.g. 'Summarize the dialogue:\\n\\n{dialogue}' ({{ }} for literal braces). Used "
        "by training, eval, predict and generate alike.",
    )
    system_prompt: str | None = Field(
        None, description="A system message for every conversation that has none (kept for inference)."
    )
    tag_column: int = Field(
        -1, description="conll: which whitespace-separated column of a line holds the tag (-1: the last)."
    )
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
    template: ChatTemplate = Field(
        "auto",
        description="Chat template: auto uses the tokenizer's own, else chatml; chatml, llama3 or alpaca; "
        "or a Jinja file (as tokenizer_config.json's chat_template) that replaces the tokenizer's own.",
    )
    truncation_side: Literal["prompt", "end"] = Field(
        "prompt",
        description="sft rows over train.max_seq_len: prompt cuts the user turns first and keeps the answer "
        "(the answer's end is cut only when it alone does not fit); end cuts the row's end.",
    )
    content_screen: ContentScreen | None = Field(
        None,
        description="Score every text for offensive content and name each flagged row by file:line, e.g. "
        "{action: drop, threshold: 0.8}; null: off.",
    )
    augment: AugmentConfig | None = Field(
        None,
        description="classify: new train rows made from each one, keeping its label (eda, or paraphrase by "
        "a model); deduplicated and leak-checked, never in validation or test.",
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


class EarlyStopping(Section):
    # Any name is read here; checks.py refuses one the task's validation pass does not log.
    metric: str = Field(
        "val_loss",
        description="The validation metric to watch, one the task logs at each validation pass: val_loss; "
        "val_perplexity (sft, pretrain); val_accuracy (classify; token_classify: per word); "
        "val_reward_accuracy, val_reward_margin (reward, preference); val_<dataset>_loss in a multi-dataset "
        "run. Lower is better for losses and perplexities, higher for the others.",
    )
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")

    @property
    def higher_is_better(self) -> bool:
        """The metric's direction, from the one table of them (validation_metrics.BETTER)."""
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
GenerativeMetric = Literal["exact_match", "rouge", "bleu", "chrf"]  # evaluation/generative.py
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
        "(zero- and few-shot) and the fine-tuned one, and score them: exact_match, rouge, bleu, chrf. "
        "Every answer is kept in generations.jsonl.",
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
