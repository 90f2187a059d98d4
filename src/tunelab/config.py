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
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        description="Weight dtype. auto: bfloat16 on a CUDA device that supports it, float32 otherwise.",
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you trust its author."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")


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


class DataConfig(Section):
    train: ExistingFile = Field(
        description="Training data: .jsonl, .json, .csv, .tsv, .parquet or .txt (.gz too)."
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
    normalize: bool = Field(True, description="Unicode NFC, control characters removed, whitespace tidied.")
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


class FullMethod(Section):
    name: Literal["full"] = Field(description="Train every weight of the model.")


class FreezeMethod(Section):
    name: Literal["freeze"] = Field(description="Train only the top k blocks plus the head.")
    k: int = Field(ge=0, description="How many of the top transformer blocks to train (0: head only).")


class LoraMethod(Section):
    name: Literal["lora"] = Field(description="Low-rank adapters through peft; the base stays frozen.")
    r: int = Field(8, gt=0, description="Rank of the LoRA update matrices.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Literal["auto"] | list[str] = Field(
        "auto",
        description="Module names to adapt; auto: every linear layer except the output head.",
    )


# A small explicit registry: the `name` field picks the class. No import strings in user YAML.
MethodConfig = Annotated[FullMethod | FreezeMethod | LoraMethod, Field(discriminator="name")]
METHOD_CLASSES: dict[str, type[Section]] = {"full": FullMethod, "freeze": FreezeMethod, "lora": LoraMethod}
METHOD_NAMES = tuple(METHOD_CLASSES)


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
    packing: bool = Field(
        False, description="sft: pack examples into max_seq_len rows; attention never crosses examples."
    )
    early_stopping: EarlyStopping | None = Field(
        None,
        description="Stop when a validation metric stops improving, e.g. {metric: val_loss, patience: 3}.",
    )
    seed: int = Field(42, description="Seed for initialisation, data order and dropout.")


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


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders (runs/<name>-<timestamp>/).")


class Recipe(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name; letters, digits, '.', '_' and '-'. Used in the run folder's name.",
    )
    task: Literal["sft", "classify"] = Field(
        description="sft: chat/instruction tuning, loss on assistant tokens. classify: sequence classification."
    )
    model: ModelConfig = Field(description="The pre-trained model to start from.")
    data: DataConfig = Field(description="Where the data is and which columns to read.")
    method: MethodConfig = Field(description="Which weights move: full, freeze or lora.")
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
        if self.eval.reference is not None and self.task != "sft":
            raise ValueError("eval.reference (the forgetting check) needs a causal language model: task sft")
        return self


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
        problems = [_format_error(err) for err in exc.errors()]
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
    if kind == "union_tag_not_found":
        return f"{path}: needs a name ({', '.join(METHOD_NAMES)})"
    if kind == "value_error":
        message = str(ctx.get("error", err["msg"]))
        return f"{path}: {message}" if loc else message
    return f"{path}: {err['msg'].lower()}, got {got!r}"
