"""The search space without training: what a grid holds, what a trial gets, how values are applied."""

from __future__ import annotations

import optuna

from tunelab.config.search import SearchConfig
from tunelab.tuning import space


def _config(**fields: object) -> SearchConfig:
    return SearchConfig.model_validate(fields)


def test_a_grid_with_paired_sets_tries_every_combination_once() -> None:
    search = _config(sampler="grid", space={"method.r": [4, 8], "method.alpha": {"same_as": "method.r", "times": 2},
                                            "train.warmup_ratio": {"low": 0.0, "high": 0.1, "step": 0.05}},
                     paired=[{"train.lr": 1e-4, "train.batch_size": 8}, {"train.lr": 2e-4, "train.batch_size": 16}])  # fmt: skip
    grid = space.grid(search)
    assert (
        grid["method.r"] == [4, 8] and len(grid["train.warmup_ratio"]) == 3 and grid[space.PAIRED] == [0, 1]
    )
    assert space.space_size(search) == 12
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen = []
    study.optimize(lambda trial: seen.append(space.suggest(trial, search)) or 0.0, n_trials=12)
    combos = {(v["method.r"], round(v["train.warmup_ratio"], 2), v["train.lr"]) for v in seen}
    assert len(combos) == 12  # every combination, none twice
    for values in seen:
        assert values["method.alpha"] == 2 * values["method.r"]  # tied, an int as r is
        assert (values["train.lr"], values["train.batch_size"]) in ((1e-4, 8), (2e-4, 16))  # paired, together


def test_ranges_suggest_ints_for_integer_bounds_and_apply_sets_nested_paths() -> None:
    search = _config(
        space={"train.epochs": {"low": 1, "high": 3}, "train.lr": {"low": 1e-5, "high": 1e-3, "log": True}}
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = space.suggest(trial, search)
    assert isinstance(values["train.epochs"], int) and 1e-5 <= values["train.lr"] <= 1e-3
    raw = {"train": {"lr": 1.0, "epochs": 9}, "name": "x"}
    applied = space.apply(raw, {**values, "method.r": 4})
    assert applied["train"]["epochs"] == values["train.epochs"] and applied["method"] == {"r": 4}
    assert raw["train"] == {"lr": 1.0, "epochs": 9}  # a copy: the starting recipe is untouched
