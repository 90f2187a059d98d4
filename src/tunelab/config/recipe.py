"""The recipe: one YAML file that drives a whole run. Its sections are in sections.py; every check
across them runs in one pass (checks.py) and all their problems are reported together, also beside
the errors of fields that did not parse (partial.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, model_validator

from tunelab.config.base import ONE_FIELD
from tunelab.config.search import SearchConfig
from tunelab.config.sections import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OutputConfig,
    PreferenceConfig,
    Section,
    TrainConfig,
    TrainSource,
)
from tunelab.methods.registry import MethodConfig, MethodField, method_spec

TASKS = ("sft", "classify", "pretrain", "preference", "reward", "token_classify", "seq2seq")
CAUSAL_TASKS = ("sft", "pretrain", "preference")


class Recipe(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name; letters, digits, '.', '_' and '-'. Used in the run folder's name.",
    )
    task: Literal["sft", "classify", "pretrain", "preference", "reward", "token_classify", "seq2seq"] = Field(
        description="sft: chat/instruction tuning, loss on assistant tokens. classify: sequence classification. "
        "pretrain: continued pre-training on text, loss on every token. preference: DPO/IPO/ORPO on chosen "
        "and rejected answers, or KTO on answers rated desirable or not. reward: a scalar reward model trained on preference pairs. token_classify: "
        "a tag per word (NER), scored by entity precision, recall and F1. seq2seq: an encoder-decoder "
        "(T5, BART, Marian) learns a target text from a source text."
    )
    model: ModelConfig = Field(description="The pre-trained model to start from.")
    data: DataConfig = Field(description="Where the data is and which columns to read.")
    method: Annotated[MethodConfig, MethodField] = Field(
        description="Which weights move: full, freeze, lora, dora, qlora, ia3, prefix, prompt, adapter, or "
        "a registered method (tunelab.methods.register_method)."
    )
    preference: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="task preference: the loss (dpo, ipo, orpo, kto) and beta.",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="The training loop's settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Baselines scored beside the result.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Where run folders go.")
    search: SearchConfig | None = Field(
        None, description="`tunelab tune`: the hyper-parameters to search, the sampler and the metric."
    )

    @model_validator(mode="after")
    def _cross_field_checks(self, info: ValidationInfo) -> Recipe:
        from tunelab.config.checks import RecipeProblems, problems_of

        if info.context and info.context.get(ONE_FIELD):  # partial.py validates one field of a stand-in
            return self
        problems = problems_of(self)
        if problems:
            raise RecipeProblems(problems)
        return self

    @property
    def packing(self) -> bool:
        """Whether train rows are packed: train.packing, else on for pretrain (unless the method
        prepends virtual tokens, whose 2-D mask peft cannot join to the packed 4-D one)."""
        if self.train.packing is not None:
            return self.train.packing and self.task in ("sft", "pretrain")
        return self.task == "pretrain" and not method_spec(self.method.name).virtual_tokens


def source_name(source: TrainSource) -> str:
    """A dataset's name in metrics: its name, else the file's stem (`hf:` specs: the dataset name)."""
    if source.name:
        return source.name
    stem = source.path.split(":", 1)[-1] if source.path.startswith("hf:") else Path(source.path).name
    return stem.split("/")[-1].split("@")[0].split(".")[0] or "train"
