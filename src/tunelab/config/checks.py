"""Checks across a recipe's sections. Each is a function of the recipe returning its problems as
(YAML path, message); all of them run, so one `validate` names every mistake (as torchtune's
`validate` does), not the first one. When some fields do not parse, each check still runs if the
fields it reads did (partial.py): keep a check to one concern, so a wrong field elsewhere skips little. Checks of the machine (a GPU, bitsandbytes) are in preflight.py:
a recipe's validity does not depend on where it is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.config.data_section import source_name
from tunelab.config.schema import RecipeSchema as Recipe
from tunelab.config.validation_metrics import early_stopping_refusal
from tunelab.methods.registry import method_spec, methods_where
from tunelab.tasks.registry import TaskSpec, task_spec, tasks_where


@dataclass(frozen=True)
class Problem:
    path: str  # where in the YAML: "train.early_stopping.metric"
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RecipeProblems(ValueError):
    """Raised from the recipe's validator; loading.py lists each problem under its path."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


Check = Callable[[Recipe], list[Problem]]


def _tasks(trait: Callable[[TaskSpec], bool], last: str = " or ") -> str:
    """The tasks with a trait, for a message: "sft or pretrain"."""
    names = tasks_where(trait)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])}{last}{names[-1]}"


def check_early_stopping(recipe: Recipe) -> list[Problem]:
    """A validation split to watch: a file, a share of train, or a dataset's own file."""
    data = recipe.data
    if recipe.train.early_stopping is None or data.validation is not None or data.split.validation:
        return []
    if any(source.validation is not None for source in data.sources):
        return []
    return [
        Problem(
            "train.early_stopping",
            "needs data.validation to watch (or data.split.validation, or a dataset's own validation file)",
        )
    ]


def check_early_stopping_metric(recipe: Recipe) -> list[Problem]:
    """A metric the validation pass logs, with a direction that means better (validation_metrics.py)."""
    stopping = recipe.train.early_stopping
    refusal = early_stopping_refusal(recipe, stopping.metric) if stopping is not None else None
    return [Problem("train.early_stopping.metric", refusal)] if refusal is not None else []


def check_reference(recipe: Recipe) -> list[Problem]:
    if recipe.eval.reference is not None and not task_spec(recipe.task).causal_lm:
        causal = ", ".join(tasks_where(lambda task: task.causal_lm))
        return [
            Problem("eval.reference", f"the forgetting check needs a causal language model: task {causal}")
        ]
    return []


def check_generative_metrics(recipe: Recipe) -> list[Problem]:
    if recipe.eval.metrics and not task_spec(recipe.task).generates_answers:
        scored = _tasks(lambda task: task.generates_answers, " and ")
        return [
            Problem(
                "eval.metrics",
                f"generated answers are scored for task {scored}; task {recipe.task} reports its own metrics",
            )
        ]
    return []


def check_prompt_template(recipe: Recipe) -> list[Problem]:
    import string

    template = recipe.data.prompt_template
    if template is None:
        return []
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return [
            Problem("data.prompt_template", f"not a template: {exc} (write {{{{ and }}}} for literal braces)")
        ]
    if not names:
        return [
            Problem("data.prompt_template", "names no field to fill in, e.g. 'Summarize:\\n\\n{dialogue}'")
        ]
    return []


KTO_ONLY = ("desirable_weight", "undesirable_weight")


def check_preference_section(recipe: Recipe) -> list[Problem]:
    # Written, not merely defaulted: `preference: {beta: 0.1}` in an sft recipe is a mistake too.
    preference = recipe.preference
    written = sorted(preference.model_fields_set)
    if written and not task_spec(recipe.task).preference_section:
        return [
            Problem(
                f"preference.{written[0]}", f"applies to task: {_tasks(lambda t: t.preference_section)} only"
            )
        ]
    if preference.objective != "kto":
        return [
            Problem(f"preference.{name}", "applies to preference.objective: kto only")
            for name in KTO_ONLY
            if name in written
        ]
    if recipe.train.batch_size < 2:
        # KTO's reference point is read from the batch's mismatched rows; with one row, prompt and
        # completion are its own, and the "KL" is the row's own reward (TRL refuses this too).
        return [
            Problem(
                "train.batch_size", "kto needs 2 or more examples per micro-batch to estimate its KL term"
            )
        ]
    return []


def check_adapter(recipe: Recipe) -> list[Problem]:
    """model.adapter's run is checked when the model loads (it may not exist yet); what the recipe alone
    says is checked here: merging into a quantised base would round the adapter into 4 or 8 bits."""
    if recipe.model.adapter is None:
        return []
    quantised = method_spec(recipe.method.name).quantised_base or recipe.model.load_in_8bit
    if quantised:
        return [
            Problem(
                "model.adapter",
                "cannot be merged into a quantised base (qlora, model.load_in_8bit); use lora over the "
                "full-precision base",
            )
        ]
    return []


# The method's fit with the task, with packing and with an 8-bit base: three checks, so that each runs
# when its own fields parsed (partial.py), e.g. packing's when the task is misspelt.


def check_method_fits_task(recipe: Recipe) -> list[Problem]:
    spec = method_spec(recipe.method.name)
    if spec.virtual_tokens and not task_spec(recipe.task).virtual_tokens:
        return [
            Problem("method.name", f"{spec.name} is not supported for task {recipe.task}; use lora or full")
        ]
    return []


def check_method_fits_packing(recipe: Recipe) -> list[Problem]:
    spec = method_spec(recipe.method.name)
    if recipe.train.packing and spec.virtual_tokens:
        return [
            Problem(
                "train.packing",
                f"method {spec.name} prepends virtual tokens, which peft cannot combine with packed rows; "
                "set train.packing: false",
            )
        ]
    return []


def check_method_fits_8bit_base(recipe: Recipe) -> list[Problem]:
    spec = method_spec(recipe.method.name)
    if recipe.model.load_in_8bit and not (spec.frozen_base and spec.quantised_base is None):
        usable = [n for n in methods_where("frozen_base") if method_spec(n).quantised_base is None]
        return [
            Problem(
                "model.load_in_8bit",
                f"an 8-bit base cannot be trained itself; use it with {', '.join(usable)}",
            )
        ]
    return []


def check_data_sources(recipe: Recipe) -> list[Problem]:
    data, problems = recipe.data, []
    several = _tasks(lambda task: task.several_datasets)
    if isinstance(data.train, list):
        if not task_spec(recipe.task).several_datasets:
            problems.append(Problem("data.train", f"a list of datasets (multi-task) is for task {several}"))
        if not data.train:
            problems.append(Problem("data.train", "the list of datasets is empty"))
        names = [source_name(s) for s in data.train]
        if len(set(names)) != len(names):
            problems.append(
                Problem("data.train", f"two datasets share a name ({', '.join(names)}); name them")
            )
    if data.replay is not None and not task_spec(recipe.task).several_datasets:
        problems.append(Problem("data.replay", f"is for task {several}"))
    if data.replay is not None and (data.replay.ratio is None) == (data.progressive is None):
        problems.append(
            Problem("data.replay", "set either replay.ratio (a constant share) or data.progressive (a ramp)")
        )
    if data.progressive is not None and data.replay is None:
        problems.append(
            Problem("data.progressive", "ramps new tasks against replay data: set data.replay.path")
        )
    return problems


PRIVATE_METHODS = ("full", "freeze", "lora")


def check_privacy(recipe: Recipe) -> list[Problem]:
    """What DP-SGD (training/privacy.py) cannot honour, each named: a packed row would hold several
    people's data, recomputed or compiled blocks would confuse the per-example gradient hooks, fp16's
    loss scale would scale the clipped gradients, and Poisson sampling draws from one dataset."""
    train = recipe.train
    if train.privacy is None:
        return []
    refusals = [
        (
            "task",
            not task_spec(recipe.task).private,
            f"is {recipe.task}; DP runs {', '.join(tasks_where(lambda task: task.private))}",
        ),
        (
            "method.name",
            recipe.method.name not in PRIVATE_METHODS,
            f"is {recipe.method.name}; DP runs {', '.join(PRIVATE_METHODS)}",
        ),
        ("train.packing", recipe.packing, "packing puts several examples (people) in one row; set it false"),
        ("train.gradient_checkpointing", train.gradient_checkpointing, "is not supported with train.privacy"),
        ("train.compile", train.compile, "is not supported with train.privacy"),
        (
            "train.precision",
            train.precision == "fp16",
            "fp16's loss scaling would scale the clipped gradients",
        ),
        (
            "data.train",
            recipe.data.multi_source,
            "DP samples one dataset; mixtures and replay are not supported",
        ),
    ]
    return [Problem(path, f"{message} (train.privacy)") for path, refused, message in refusals if refused]


def check_canaries(recipe: Recipe) -> list[Problem]:
    if recipe.eval.canaries is None:
        return []
    problems = []
    if not task_spec(recipe.task).canaries:
        canaries = _tasks(lambda task: task.canaries)
        problems.append(Problem("eval.canaries", f"is for task {canaries} (generation), not {recipe.task}"))
    if recipe.data.multi_source:
        problems.append(
            Problem("eval.canaries", "is for one training dataset; mixtures and replay are not supported")
        )
    return problems


def check_classify_only(recipe: Recipe) -> list[Problem]:
    """Settings that only make sense with labels: class weights, label-preserving augmentation, bias."""
    settings = [
        ("train.class_weights", recipe.train.class_weights != "none", ""),
        ("data.augment", recipe.data.augment is not None, " (label-preserving rewrites)"),
        ("eval.bias", recipe.eval.bias is not None, " (labels against identity terms)"),
    ]
    classes = _tasks(lambda task: task.classes)
    problems = [
        Problem(path, f"applies to task: {classes} only{why}")
        for path, written, why in settings
        if written and not task_spec(recipe.task).classes
    ]
    augment = recipe.data.augment
    if (
        augment is not None
        and augment.method == "paraphrase"
        and (augment.model is None) == (augment.endpoint is None)
    ):
        problems.append(
            Problem("data.augment", "paraphrase needs one of data.augment.model or data.augment.endpoint")
        )
    return problems


CHECKS: list[Check] = [
    check_early_stopping,
    check_early_stopping_metric,
    check_reference,
    check_generative_metrics,
    check_prompt_template,
    check_preference_section,
    check_adapter,
    check_method_fits_task,
    check_method_fits_packing,
    check_method_fits_8bit_base,
    check_data_sources,
    check_privacy,
    check_classify_only,
    check_canaries,
]


def problems_of(recipe: Recipe) -> list[Problem]:
    """Every check's problems, in CHECKS order."""
    return [problem for check in CHECKS for problem in check(recipe)]
