"""`tunelab tune`: an Optuna study of ordinary runs; a diverging learning rate is pruned; best.yaml
trains; the registry knows every trial; two workers share one study; memory does not grow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import as_if_from_a_terminal, make_recipe, write_jsonl
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.runner import train
from tunelab.runs.registry import list_runs

pytestmark = pytest.mark.slow
runner = CliRunner()


def _search_recipe(tmp_path: Path, model: Path, search: dict[str, Any], **train: Any) -> Path:
    path = make_recipe(
        tmp_path, model, "sft", train={"epochs": 4, "eval_every": 2, "save_every": 100, **train}
    )
    raw = yaml.safe_load(path.read_text())
    test = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (("Is the sky blue today?", "Mostly, yes."), ("Open an account", "Opened for you."))]  # fmt: skip
    raw["data"]["test"] = str(write_jsonl(tmp_path / "test.jsonl", test))
    raw["search"] = search
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


SEARCH = {
    "metric": "val_loss", "sampler": "tpe", "trials": 6, "pruner": "median", "startup_trials": 2, "seed": 1,
    "space": {"train.lr": {"low": 1.0e-3, "high": 50.0, "log": True}, "method.r": [2, 4],
              "method.alpha": {"same_as": "method.r", "times": 2}},
    # After the recipe's own values (trial 0): a good setting, then a learning rate that diverges.
    "enqueue": [{"train.lr": 3.0e-3, "method.r": 2}, {"train.lr": 30.0, "method.r": 4}],
}  # fmt: skip


@pytest.fixture(scope="module")
def study(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("tune")
    recipe = _search_recipe(folder, tiny_llama, SEARCH)
    result = runner.invoke(app, ["tune", str(recipe)])
    assert result.exit_code == 0, result.output
    runs = Path(load_recipe(recipe).output.dir)
    storage = f"sqlite:///{runs.resolve() / 'studies.sqlite'}"
    return optuna.load_study(study_name="tiny-sft", storage=storage), runs, result.output


def test_six_trials_with_the_diverging_one_pruned(study: Any) -> None:
    loaded, _, output = study
    trials = loaded.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert trials[0].user_attrs["starting_recipe"] and trials[0].params == {"train.lr": 1e-2, "method.r": 4}
    bad = trials[2]
    assert bad.params["train.lr"] == 30.0 and bad.state == optuna.trial.TrialState.PRUNED
    finished_steps = {t.user_attrs["steps"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert finished_steps == {8} and bad.user_attrs["steps"] < 8  # stopped at its first validation pass
    assert all(t.user_attrs["values"]["method.alpha"] == 2 * t.params["method.r"] for t in trials)  # tied
    assert "diverged" in bad.user_attrs["reason"]  # the study report's "why" column
    pruned_run = json.loads((Path(bad.user_attrs["run_dir"]) / "summary.json").read_text())
    assert pruned_run["status"] == "pruned" and not (Path(bad.user_attrs["run_dir"]) / "final").exists()
    states = [t.state.name.lower() for t in trials]
    assert f"trials: {states.count('complete')} complete, {states.count('pruned')} pruned" in output


def test_every_trial_is_a_run_in_the_registry_tagged_with_the_study(study: Any) -> None:
    loaded, runs, _ = study
    tagged = [r for r in list_runs(runs) if r["tags"].get("study") == "tiny-sft"]
    assert sorted(int(r["tags"]["trial"]) for r in tagged) == list(range(6))
    listed = runner.invoke(
        app, ["runs", "list", "--dir", str(runs), "--tag", "study=tiny-sft", "--limit", "50"]
    )
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()[2:]) == sorted(
        r["run_id"] for r in tagged
    )
    by_trial = {int(r["tags"]["trial"]): r["status"] for r in tagged}
    expected = {"COMPLETE": "completed", "PRUNED": "pruned"}
    assert by_trial == {t.number: expected[t.state.name] for t in loaded.get_trials()}
    assert all("test_loss" not in r["metrics"] for r in tagged)  # trials never see the test split


def test_best_yaml_trains_and_the_report_keeps_test_apart(study: Any) -> None:
    loaded, runs, _ = study
    folder = runs / "tiny-sft-study"
    best = load_recipe(folder / "best.yaml")
    assert best.search is None and best.data.test is not None
    assert (
        best.train.lr == pytest.approx(loaded.best_params["train.lr"])
        and best.method.r == loaded.best_params["method.r"]
    )
    summary = json.loads((folder / "study.json").read_text())
    assert summary["best"]["number"] == loaded.best_trial.number and set(summary["best"]["test"]) >= {
        "test_loss"
    }
    html = (folder / "study.html").read_text()
    assert "biased upward" in html and "computed once" in html and html.count("data:image/png;base64,") >= 2
    assert (
        set(summary["best"]["baselines"]) == {"zero_shot", "few_shot"} and "The base model, untrained" in html
    )
    result = train(best)
    assert result.summary.status == "completed" and "test_loss" in result.summary.metrics


def test_memory_does_not_grow_from_trial_to_trial(study: Any) -> None:
    loaded, _, _ = study
    rss = [t.user_attrs["rss_mb"] for t in loaded.get_trials()]
    assert rss[-1] <= rss[0] * 1.10, rss


def test_validate_names_every_problem_of_the_space(tiny_llama: Path, tmp_path: Path) -> None:
    search = {"trials": 3, "sampler": "grid", "metric": "test_loss", "space": {
        "train.lrr": [1e-3], "train.lr": {"low": 1e-4, "high": 1e-2}, "train.epochs": [0, 2],
        "method.alpha": {"same_as": "method.rank"}}}  # fmt: skip
    result = runner.invoke(app, ["validate", str(_search_recipe(tmp_path, tiny_llama, search))])
    assert result.exit_code == 1
    for expected in ("search.space.train.lrr", "search.space.train.lr: a grid needs a list of values",
                     "search.space.train.epochs", "same_as 'method.rank' is not a searched parameter",
                     "search.metric: 'test_loss' is not a validation metric"):  # fmt: skip
        assert expected in result.output, result.output


def test_two_workers_share_one_study_without_running_a_trial_twice(tiny_llama: Path, tmp_path: Path) -> None:
    search = {**SEARCH, "trials": 8, "sampler": "random", "pruner": "none", "enqueue": []}
    recipe = _search_recipe(tmp_path, tiny_llama, search, epochs=1)
    storage = f"journal:{tmp_path / 'study.journal'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tunelab", "tune", str(recipe), "--worker", "--storage", storage]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    shared = optuna.load_study(
        study_name="tiny-sft", storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    )
    done = [t for t in shared.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and len({t.number for t in done}) == 8
    assert len({t.user_attrs["run_dir"] for t in done}) == 8  # eight runs, none trained twice
    assert all(f"trial {n}:" in "".join(outputs) for n in range(8))
    assert all(o.count("trial ") >= 1 for o in outputs)  # both workers trained


def test_ctrl_c_ends_the_trial_cleanly_and_resume_finishes_the_study(
    tiny_llama: Path, tmp_path: Path
) -> None:
    import signal
    import time

    search = {**SEARCH, "trials": 3, "sampler": "random", "pruner": "none", "enqueue": []}
    recipe = _search_recipe(tmp_path, tiny_llama, search, epochs=16)
    storage = f"sqlite:///{(tmp_path / 'runs').resolve() / 'studies.sqlite'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "tunelab", "tune", str(recipe)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=as_if_from_a_terminal)  # fmt: skip
    deadline = time.monotonic() + 300
    # Interrupt the second trial inside its training loop: once its run has logged a step.
    while not list((tmp_path / "runs").glob("tiny-sft-t001-*/metrics.jsonl")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 130 and "interrupted" in output, output
    trials = optuna.load_study(study_name="tiny-sft", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]  # nothing left RUNNING
    interrupted = list((tmp_path / "runs").glob("tiny-sft-t001-*"))
    assert len(interrupted) == 1
    assert json.loads((interrupted[0] / "summary.json").read_text())["status"] == "interrupted"
    assert (tmp_path / "runs" / "tiny-sft-study" / "study.html").is_file()  # the report so far
    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    states = [t.state.name for t in optuna.load_study(study_name="tiny-sft", storage=storage).get_trials()]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]


def test_a_trial_that_would_not_fit_is_skipped_before_it_trains(tiny_llama: Path, tmp_path: Path) -> None:
    search = {**SEARCH, "trials": 2, "sampler": "random", "pruner": "none", "enqueue": [], "memory": "100MB"}
    result = runner.invoke(app, ["tune", str(_search_recipe(tmp_path, tiny_llama, search))])
    assert result.exit_code == 1 and "2 trials failed (the last: needs about" in result.output, result.output
    storage = f"sqlite:///{(tmp_path / 'runs').resolve() / 'studies.sqlite'}"
    trials = optuna.load_study(study_name="tiny-sft", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert all("--memory has 0.1" in t.user_attrs["reason"] for t in trials)
    assert not list((tmp_path / "runs").glob("tiny-sft-t*"))  # no run folder: nothing started
