"""Tasks as registered units: a `TaskSpec` holds what a task is (the records it reads, the model head it
trains, what it reports) and what it does at each stage (tokenise, collate, its loss, its baselines, its
scores after training), registered once with `register_task`, as methods are with `register_method`.
The data stage, the model loader, the loop, evaluation, export and the recipe's checks ask the registry;
nothing else keeps a table of task names.

This module sits with the recipe (layer 1): it imports nothing of tunelab's above it, so every layer can
ask it. The built-in tasks are defined higher up, in one module each (`tunelab.tasks.sft`, ...), since
their hooks are the data stage's, the loop's and evaluation's functions; the registry imports those
modules by name on its first lookup, as Python loads entry points, never by an import statement. So a
registry lookup must not run at import time (module level): it would import the layers above.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# The built-in tasks, in the order recipes and messages list them, and the module registering each.
BUILTIN = {
    "sft": "tunelab.tasks.sft",
    "classify": "tunelab.tasks.classify",
    "pretrain": "tunelab.tasks.pretrain",
    "preference": "tunelab.tasks.preference",
    "reward": "tunelab.tasks.reward",
    "token_classify": "tunelab.tasks.token_classify",
    "seq2seq": "tunelab.tasks.seq2seq",
}


@dataclass(frozen=True)
class Head:
    """The model a task trains: which transformers Auto class loads, restores and exports it, which peft
    task type wraps it, and how its outputs are sized. Names, not classes: this layer imports neither
    transformers nor peft (models/ resolves them)."""

    name: str
    auto_class: str  # e.g. "AutoModelForCausalLM"
    peft_task_type: str  # a peft.TaskType member, e.g. "CAUSAL_LM"
    pipeline_tag: str  # the Hub's pipeline tag, for model cards
    description: str  # "a causal language model", in errors
    # What to do when transformers has no class of this head for the model's architecture.
    hint: str = "use a model whose architecture transformers has this head for (BERT-, RoBERTa-, Llama-like)"
    outputs: Literal["vocabulary", "labels", "score"] = "vocabulary"  # labels: one per class or tag
    generative: bool = False  # answers come from generate(): export writes a generation config
    word_level: bool = False  # inputs arrive as words (taggers): byte-level BPEs add a prefix space
    # Modules a checkpoint lacks that the head adds (kept out of bitsandbytes' 8/4-bit layers).
    new_modules: tuple[str, ...] = ()

    @property
    def labels_examples(self) -> bool:
        """One label per example (a sequence classifier): scored by the argmax of its logits."""
        return self.outputs == "labels" and not self.word_level


CAUSAL_LM = Head(
    "causal_lm",
    "AutoModelForCausalLM",
    "CAUSAL_LM",
    "text-generation",
    "a causal language model",
    "task sft, pretrain and preference need a decoder-only model (Llama, Qwen, SmolLM, GPT-2, ...); an "
    "encoder-decoder such as T5 or BART trains with task: seq2seq",
    generative=True,
)
SEQ2SEQ_LM = Head(
    "seq2seq_lm",
    "AutoModelForSeq2SeqLM",
    "SEQ_2_SEQ_LM",
    "text2text-generation",
    "an encoder-decoder (sequence-to-sequence) model",
    "task seq2seq needs an encoder-decoder (T5, BART, Marian, ...); a decoder-only model learns prompt -> "
    "completion with task: sft",
    generative=True,
)
_CLASSIFIER_MODULES = ("classifier", "score", "pooler")
SEQUENCE_CLASSIFIER = Head(
    "sequence_classifier",
    "AutoModelForSequenceClassification",
    "SEQ_CLS",
    "text-classification",
    "a sequence classifier",
    outputs="labels",
    new_modules=_CLASSIFIER_MODULES,
)
SCALAR_SCORE = Head(
    "scalar_score",
    "AutoModelForSequenceClassification",
    "SEQ_CLS",
    "text-classification",
    "a reward model",
    outputs="score",
    new_modules=_CLASSIFIER_MODULES,
)
TOKEN_CLASSIFIER = Head(
    "token_classifier",
    "AutoModelForTokenClassification",
    "TOKEN_CLS",
    "token-classification",
    "a token classifier",
    outputs="labels",
    word_level=True,
    new_modules=_CLASSIFIER_MODULES,
)

Hook = Callable[..., Any]


@dataclass(frozen=True)
class TaskSpec:
    """A task. `recipe` below is the validated Recipe; hooks are plain functions of the layer that owns
    the work (the data stage's tokenisers, the loop's losses, evaluation's scorers).

    Hooks:
      - tokenize(tokenizer, records, label_map, policy, recipe) -> (examples, stats): one group of
        records of one kind (the data stage groups them by dataset and record type);
      - collate(examples, pad_token_id) -> batch;
      - objective(recipe, model, class_weights) -> training.objectives.Objective;
      - label_map(stage, splits, report) -> {name: id}: the classes or tags train defines (None: none);
      - baselines(context) -> (scores by baseline, generated answers by baseline): before training;
      - after_training(context) -> (eval.json parts, metrics): the held-out split after training;
      - validation_extras(context) -> a function returning scores added to every validation pass.
    `context` is evaluation.tasks.TaskContext: the recipe, model, tokenizer, data and accelerator.
    """

    name: str
    head: Head
    # The record kinds it trains on (data/records.py), and, per preference.objective, other kinds.
    record_kinds: tuple[str, ...]
    tokenize: Hook
    collate: Hook
    objective: Hook
    # What each validation pass logs (after val_), and the headline metrics, best first.
    validation_metrics: tuple[str, ...] = ("loss",)
    main_metrics: tuple[str, ...] = ("loss",)
    kinds_by_objective: dict[str, tuple[str, ...]] = field(default_factory=dict)
    metrics_by_objective: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label_map: Hook | None = None
    baselines: Hook | None = None
    after_training: Hook | None = None
    validation_extras: Hook | None = None
    # General data mixed in against forgetting (data.replay): the record kinds it may be.
    replay_kinds: tuple[str, ...] = ()
    # Traits the recipe's checks, the data stage and plan read.
    chat_template: bool = False  # records are rendered with a chat template (and its marker tokens)
    tool_calls: bool = False  # trains on function calling: a row's tools, an assistant's calls
    generates_answers: bool = False  # eval.metrics: answers generated and scored
    several_datasets: bool = False  # data.train as a list of datasets, data.replay
    classes: bool = False  # labels are classes: stratified splits, class weights, augmentation, bias
    packable: bool = False  # train.packing may join examples into rows
    packed_by_default: bool = False
    private: bool = False  # train.privacy (DP-SGD) supports it
    canaries: bool = False  # eval.canaries: secrets planted in train and looked for in generations
    virtual_tokens: bool = True  # prefix / prompt tuning work with its head
    preference_section: bool = False  # reads the recipe's preference: section
    evaluable: bool = True  # `tunelab eval` scores a data file with it (its hooks need no recipe)
    rows_per_example: int = 1  # preference pairs: chosen and rejected in one batch
    perplexity: bool = False  # validation reports exp(loss)
    # Its loss is the next-token cross-entropy on labels (training/objectives.causal_lm), which the fused
    # head loss computes without the logits (training/losses.py): plan counts on it.
    token_loss: bool = False

    @property
    def causal_lm(self) -> bool:
        return self.head is CAUSAL_LM

    def kinds(self, objective: str | None = None) -> tuple[str, ...]:
        """The record kinds this task trains on under `objective` (preference.objective)."""
        return self.kinds_by_objective.get(objective or "", self.record_kinds)

    def logged(self, objective: str | None = None) -> tuple[str, ...]:
        """What its validation passes log under `objective`, before any extras."""
        return self.metrics_by_objective.get(objective or "", self.validation_metrics)


_REGISTRY: dict[str, TaskSpec] = {}
_LOADED: set[str] = set()


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make `spec` a task a recipe can name. A name is registered once."""
    known = _REGISTRY.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Forget a task (tests that register one clean up after themselves)."""
    _REGISTRY.pop(name, None)


def task_spec(name: str) -> TaskSpec:
    _load(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; one of {', '.join(task_names())}")
    return _REGISTRY[name]


def task_names() -> tuple[str, ...]:
    """Built-in tasks first, in their order, then registered ones; without loading any module."""
    return (*BUILTIN, *(name for name in _REGISTRY if name not in BUILTIN))


def tasks_where(trait: Callable[[TaskSpec], bool]) -> tuple[str, ...]:
    return tuple(name for name in task_names() if trait(task_spec(name)))


def is_task(name: Any) -> bool:
    return isinstance(name, str) and name in task_names()


def _load(name: str) -> None:
    module = BUILTIN.get(name)
    if module is not None and module not in _LOADED:
        _LOADED.add(module)
        importlib.import_module(module)  # by name: the module registers the task, from a higher layer
