"""The recipe's schema: its sections and fields (sections.py, data_section.py; the method section's schema
is the registered method's). recipe.py adds the checks across fields; checks.py reads this schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from tunelab.config.search import SearchConfig
from tunelab.config.sections import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    OutputConfig,
    PreferenceConfig,
    Section,
    TrainConfig,
)
from tunelab.methods.registry import MethodConfig, MethodField, method_spec
from tunelab.tasks.registry import is_task, task_names, task_spec


def _registered_task(value: object) -> object:
    """A task the registry knows (built-in or registered), named by the registry's own list."""
    if isinstance(value, str) and is_task(value):
        return value
    names = [repr(name) for name in task_names()]
    expected = f"{', '.join(names[:-1])} or {names[-1]}"
    raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})


TaskName = Annotated[str, BeforeValidator(_registered_task)]


class RecipeSchema(Section):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Run name; letters, digits, '.', '_' and '-'. Used in the run folder's name.",
    )
    task: TaskName = Field(
        description="sft: chat/instruction tuning, loss on assistant tokens. classify: sequence classification. "
        "pretrain: continued pre-training on text, loss on every token. preference: DPO/IPO/ORPO on chosen "
        "and rejected answers, or KTO on answers rated desirable or not. reward: a scalar reward model trained on preference pairs. token_classify: "
        "a tag per word (NER), scored by entity precision, recall and F1. seq2seq: an encoder-decoder "
        "(T5, BART, Marian) learns a target text from a source text. Or a task registered with "
        "tunelab.tasks.register_task."
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

    @property
    def packing(self) -> bool:
        """Whether train rows are packed: train.packing, else on for pretrain (unless the method
        prepends virtual tokens, whose 2-D mask peft cannot join to the packed 4-D one)."""
        task = task_spec(self.task)
        if self.train.packing is not None:
            return self.train.packing and task.packable
        return task.packed_by_default and not method_spec(self.method.name).virtual_tokens
