"""`tunelab tune`: an Optuna study over recipe paths, each trial an ordinary `train` run.

Optuna does the search (samplers, pruners, storage shared by several workers, heartbeats); tunelab
turns a trial into a recipe, runs it with a validation callback that reports to the trial, and
keeps what Optuna does not: trial runs tagged in the registry, trials skipped before they start when
`plan` says they cannot fit, memory released between trials, and best.yaml plus an honest report.
"""

from __future__ import annotations

import gc
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from tunelab.config import Recipe, load_recipe
from tunelab.config.search import SearchConfig
from tunelab.errors import RunPruned, TunelabError
from tunelab.tuning import space

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
HEARTBEAT_S, GRACE_S = 30, 120  # a worker silent for GRACE_S has died: its trial is failed, not waited on


class TrialSkipped(Exception):
    """A trial that did not train (its recipe is refused, it would not fit in memory): FAIL, with why."""


@dataclass
class Study:
    """What one `tunelab tune` works on: the study, the raw recipe its trials start from, where it writes."""

    study: optuna.Study
    raw: dict[str, Any]
    search: SearchConfig
    folder: Path
    test_file: str | None  # scored once, for the best trial, at the end


def open_study(recipe_path: Path, overrides: list[str], storage: str | None, *, resume: bool) -> Study:
    """Create the study (or, with `resume`, join the one of that name: --resume and --worker)."""
    recipe = load_recipe(recipe_path, overrides)
    if recipe.search is None:
        raise TunelabError(f"{recipe_path}: no `search:` section", fix="add search: {space: {train.lr: ...}}")
    search = recipe.search
    raw = _raw_recipe(recipe)
    problems = search_problems(recipe)
    if problems:
        raise TunelabError(
            f"{recipe_path}: the search space has {len(problems)} problem(s)", problems=problems
        )
    name = search.study_name or recipe.name
    folder = Path(recipe.output.dir) / f"{name}-study"
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{Path(recipe.output.dir).resolve() / 'studies.sqlite'}"
    try:
        study = optuna.create_study(
            storage=_storage(url),
            sampler=_sampler(search),
            pruner=_pruner(search, recipe),
            study_name=name,
            direction="minimize" if search.minimize else "maximize",
            load_if_exists=resume,
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise TunelabError(
            f"a study named {name!r} exists already in {url}", fix="continue it with --resume (or --worker)"
        ) from None
    if not study.trials:  # new: the first trials are queued once (skip_if_exists: workers racing here)
        study.set_user_attr("recipe", str(recipe_path))
        for values, starting in _first_trials(raw, search):
            study.enqueue_trial(values, user_attrs={"starting_recipe": starting}, skip_if_exists=True)
    return Study(study, raw, search, folder, recipe.data.test)


def search_problems(recipe: Recipe) -> list[str]:
    """Everything wrong with a recipe's search (its space against the recipe, its metric, its data)."""
    assert recipe.search is not None
    return space.check_space(_raw_recipe(recipe), recipe.search) + _metric_problems(recipe, recipe.search)


def _raw_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data, for trials: no search (a trial is not a search) and no test split (the
    test file is scored once, for the best trial only, so no choice is made on it)."""
    import yaml

    from tunelab.config import recipe_to_yaml

    raw = yaml.safe_load(recipe_to_yaml(recipe))
    raw.pop("search", None)
    raw["data"].pop("test", None)
    return dict(raw)


def _metric_problems(recipe: Recipe, search: SearchConfig) -> list[str]:
    problems = []
    if not search.metric.startswith("val_"):
        problems.append(
            f"search.metric: {search.metric!r} is not a validation metric (val_...): a study "
            "chooses on validation, and the test split is scored once, for the best trial"
        )
    if search.memory:
        from tunelab.plan import parse_memory

        try:
            parse_memory(search.memory)
        except TunelabError as exc:
            problems.append(f"search.memory: {exc.message}")
    data = recipe.data
    if data.validation is None and not data.split.validation:
        problems.append("data: a study needs a validation split (data.validation, or data.split.validation)")
    return problems


def _storage(url: str) -> Any:
    if url.startswith("journal:"):  # a file on a filesystem every worker shares (NFS is fine)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable enough
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
        )


def _sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(search), seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=min(5, search.trials // 2 or 1))


def _pruner(search: SearchConfig, recipe: Recipe) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        # The first validation pass is never judged: early losses are noise (a diverged one still stops).
        warmup = recipe.train.eval_every
        return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=warmup)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=recipe.train.eval_every, max_resource="auto")
    return optuna.pruners.NopPruner()


def _first_trials(raw: dict[str, Any], search: SearchConfig) -> list[tuple[dict[str, Any], bool]]:
    """For a sampled search, the starting recipe's own values when they lie in the space (that trial
    is the recipe as written; the report compares the best against it), then search.enqueue."""
    first = []
    start = _starting_values(raw, search) if search.sampler != "grid" else None
    if start is not None:
        first.append((start, True))
    return first + [(_optuna_params(item, search), False) for item in search.enqueue]


def _starting_values(raw: dict[str, Any], search: SearchConfig) -> dict[str, Any] | None:
    values = {}
    for path, spec in search.space.items():
        node: Any = raw
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if (
            isinstance(spec, space.Range) and isinstance(node, int | float) and spec.low <= node <= spec.high
        ) or (isinstance(spec, list) and node in spec):
            values[path] = node
        elif not isinstance(spec, space.Tied):
            return None
    return None if search.paired else values


def _optuna_params(item: dict[str, Any], search: SearchConfig) -> dict[str, Any]:
    return {path: value for path, value in item.items() if not isinstance(search.space.get(path), space.Tied)}


def run_trials(work: Study, console: Console) -> None:
    """Trials until the study has its number of finished ones, over every worker sharing it; a study
    whose trials keep failing (none fits, a broken data file) stops instead of trying for ever."""
    while _counted(work.study) < work.search.trials:
        failed = work.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if len(failed) >= work.search.trials:
            last = failed[-1].user_attrs.get("reason") or failed[-1].system_attrs.get("fail_reason")
            raise TunelabError(
                f"{len(failed)} trials failed (the last: {last})", fix="see study.html's trials"
            )
        work.study.optimize(
            lambda trial: _objective(trial, work, console),
            n_trials=1,
            catch=(TrialSkipped,),
            gc_after_trial=True,
        )


def _counted(study: optuna.Study, below: int | None = None) -> int:
    """Trials that count against the budget (finished, or running in some worker)."""
    states = (*FINISHED, optuna.trial.TrialState.RUNNING)
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=states) if below is None or t.number < below
    )


def _objective(trial: optuna.Trial, work: Study, console: Console) -> float:
    from tunelab.runner import train

    if _counted(work.study, below=trial.number) >= work.search.trials:  # another worker got there first
        raise TrialSkipped(f"the study has its {work.search.trials} trials")
    values = space.suggest(trial, work.search)
    recipe = _trial_recipe(work, trial.number, values)
    trial.set_user_attr("values", values)
    _check_fits(trial, recipe, work.search)
    console.print(
        f"trial {trial.number}: "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    )
    try:
        result = train(recipe, console=console, on_validation=_reporter(trial, work.search.metric))
    except RunPruned as exc:
        _record_run(trial, recipe)
        trial.set_user_attr("reason", str(exc))
        raise optuna.TrialPruned(str(exc)) from None
    finally:
        _release_memory()
        trial.set_user_attr("rss_mb", _rss_mb())
    trial.set_user_attr("run_dir", str(result.run_dir))
    trial.set_user_attr("steps", result.summary.steps)
    metrics = result.summary.metrics
    if work.search.metric not in metrics:
        raise TrialSkipped(f"the run reported no {work.search.metric} (it reported {', '.join(metrics)})")
    return float(metrics[work.search.metric])


def _trial_recipe(work: Study, number: int, values: dict[str, Any]) -> Recipe:
    raw = space.apply(work.raw, values)
    raw["name"] = f"{work.study.study_name}-t{number:03d}"
    raw.setdefault("output", {})["tags"] = {
        **raw["output"].get("tags", {}),
        "study": work.study.study_name,
        "trial": str(number),
    }
    try:
        return Recipe.model_validate(raw)
    except ValueError as exc:  # values the space check could not foresee (a combination)
        raise TrialSkipped(f"the trial's recipe is refused: {exc}") from None


def _check_fits(trial: optuna.Trial, recipe: Recipe, search: SearchConfig) -> None:
    """`tunelab plan`'s estimate (no probe): a trial that cannot fit is skipped before it loads data."""
    from tunelab.plan import parse_memory, plan

    budget = parse_memory(search.memory) if search.memory else None
    verdict = plan(recipe, budget, probe_steps=0)
    trial.set_user_attr("planned_peak_mb", round(verdict.needed / 2**20))
    if not verdict.fits:
        reason = f"needs about {verdict.needed / 2**30:.1f} GiB, {verdict.budget_source} has {verdict.budget / 2**30:.1f}"
        trial.set_user_attr("reason", reason)
        raise TrialSkipped(f"does not fit: {reason}")


def _reporter(trial: optuna.Trial, metric: str) -> Any:
    """The loop's validation passes, reported to the trial; the pruner's verdict ends the run."""

    def report(step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(metric)
        if value is None:
            return
        trial.report(value, step)
        if not math.isfinite(value):
            raise RunPruned(step, f"{metric} is {value}: the run diverged")
        if trial.should_prune():
            raise RunPruned(step, f"{metric} {value:.4g} at step {step} lags the other trials")

    return report


def _record_run(trial: optuna.Trial, recipe: Recipe) -> None:
    from tunelab.runs.registry import list_runs

    for run in list_runs(recipe.output.dir, limit=20):
        if run.get("name") == recipe.name:
            trial.set_user_attr("run_dir", run["run_dir"])
            trial.set_user_attr("steps", run["steps"])
            return


def _release_memory() -> None:
    """Between trials: nothing of the last trial's model, optimizer or accelerate state survives, so
    trial 20 has the memory trial 1 had (transformers' hyperparameter_search keeps it: #31923)."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # each trial's precision is its own; the process group is kept
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rss_mb() -> float:
    """This process's resident memory now (Linux), kept per trial: the report shows it does not grow."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
    except OSError:
        return float("nan")
    line = next((li for li in status.splitlines() if li.startswith("VmRSS:")), "VmRSS: 0 kB")
    return round(int(line.split()[1]) / 1024, 1)
