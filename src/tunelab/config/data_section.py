"""The recipe's `data:` section, field by field (see sections.py): the files, their format and columns,
cleaning, splitting, mixing several datasets, and the data-stage safety settings. Files must exist when
the recipe is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from tunelab.config.base import Section
from tunelab.config.hub_spec import is_hub_spec, parse_spec
from tunelab.config.safety import AugmentConfig, ContentScreen
from tunelab.errors import DataError


def _existing_file(value: str) -> str:
    """Data paths must exist when the recipe is validated, so a typo fails before any model loads.
    Hub datasets (hf:org/name[@revision][:split]) are checked for form here and fetched at load time."""
    if is_hub_spec(value):
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

BUILTIN_TEMPLATE_NAMES = ("auto", "chatml", "chatml_tools", "llama3", "alpaca")


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


def source_name(source: TrainSource) -> str:
    """A dataset's name in metrics: its name, else the file's stem (`hf:` specs: the dataset name)."""
    if source.name:
        return source.name
    stem = source.path.split(":", 1)[-1] if source.path.startswith("hf:") else Path(source.path).name
    return stem.split("/")[-1].split("@")[0].split(".")[0] or "train"
