"""The feedback loop on tiny trained runs: sample answers, rate them, export, compare models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe, write_jsonl
from tests.unit.test_feedback_export import rated_store
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.errors import TunelabError
from tunelab.feedback.sample import Settings, model_id, sample
from tunelab.feedback.store import FeedbackStore
from tunelab.feedback.winrate import compare_models
from tunelab.runner import train

runner = CliRunner()
PROMPTS = [
    {"prompt": "Hello there!"},
    {"messages": [{"role": "user", "content": "Where is my order?"}]},
    {"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Lost card"}]},
]
PAIRS = [
    {"prompt": f"Help with request {i}?", "chosen": f"Yes, happy to help with {i}.", "rejected": "No."}
    for i in range(8)
]
FAST = {"max_steps": 2, "eval_every": 1000, "save_every": 1000, "log_every": 1}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, chat_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("fb-sft")
    return train(load_recipe(make_recipe(root, chat_llama, "sft", train=FAST))).run_dir


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("fb-reward")
    data = {"train": str(write_jsonl(root / "pairs.jsonl", PAIRS)), "validation": None}
    return train(load_recipe(make_recipe(root, tiny_llama, "reward", data=data, train=FAST))).run_dir


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)


SETTINGS = Settings(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=3)


def _texts(db: Path) -> list[str]:
    return [s["text"] for s in FeedbackStore(db).samples()]


def test_sample_stores_n_answers_per_prompt_pairs_them_and_seeds_reproduce(
    sft_run: Path, prompts: Path, tmp_path: Path
) -> None:
    done = sample(sft_run, prompts, settings=SETTINGS, database=tmp_path / "one.sqlite")
    stored = FeedbackStore(done.database).samples()
    assert (done.prompts, done.samples, done.pairs, done.models) == (3, 6, 3, [sft_run.name])
    assert {(s["temperature"], s["top_p"], s["max_new_tokens"]) for s in stored} == {(1.0, 0.9, 6)}
    assert sorted(s["seed"] for s in stored) == [3, 3, 3, 4, 4, 4]
    assert [s["prompt"] for s in stored[:3]] == [
        [{"role": "user", "content": "Hello there!"}],
        [{"role": "user", "content": "Where is my order?"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Lost card"}],
    ]
    again = sample(sft_run, prompts, settings=SETTINGS, database=tmp_path / "two.sqlite")
    assert _texts(again.database) == _texts(done.database)
    other = Settings(n=2, temperature=1.0, top_p=0.9, max_new_tokens=6, seed=4)
    assert _texts(
        sample(sft_run, prompts, settings=other, database=tmp_path / "three.sqlite").database
    ) != _texts(done.database)


def test_sample_against_the_base_pairs_the_two_models_and_defaults_to_the_runs_registry(
    sft_run: Path, prompts: Path, chat_llama: Path
) -> None:
    done = sample(sft_run, prompts, against="base", settings=SETTINGS)
    assert done.database == sft_run.parent / "registry.sqlite"  # where `tunelab serve` and its dashboard look
    assert done.models == [sft_run.name, f"base:{chat_llama}"]
    assert (done.samples, done.pairs) == (12, 6)
    store = FeedbackStore(done.database)
    job = store.next_pair("alice")
    assert {job.left.model, job.right.model} == set(done.models)


def test_bad_sampling_settings_are_refused_before_loading(
    sft_run: Path, prompts: Path, tmp_path: Path
) -> None:
    with pytest.raises(TunelabError, match="identical answers"):
        sample(sft_run, prompts, settings=Settings(n=2, temperature=0.0), database=tmp_path / "x.sqlite")
    with pytest.raises(TunelabError, match="same model"):
        sample(sft_run, prompts, against=str(sft_run), settings=SETTINGS, database=tmp_path / "x.sqlite")


def test_a_model_without_a_chat_template_is_refused(tiny_llama: Path, prompts: Path, tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="no chat template"):
        sample(str(tiny_llama), prompts, settings=SETTINGS, database=tmp_path / "x.sqlite")


def test_compare_models_by_reward_model_says_so(
    sft_run: Path, reward_run: Path, prompts: Path, tmp_path: Path
) -> None:
    result = compare_models(str(sft_run), "base", prompts, reward=reward_run, n_boot=200, max_new_tokens=6)
    assert result["judge"] == "reward_model"
    assert result["judged_by"] == f"reward model {reward_run}, not by people"
    assert result["n_prompts"] == 3 and result["wins"] + result["ties"] + result["losses"] == 3
    assert all(isinstance(d["score_a"], float) for d in result["details"])
    assert result["ci95"][0] <= result["win_rate"] <= result["ci95"][1]


def test_cli_sample_rate_export_and_compare(
    sft_run: Path, reward_run: Path, prompts: Path, tmp_path: Path
) -> None:
    db = tmp_path / "cli.sqlite"
    args = ["sample", str(sft_run), "--prompts", str(prompts), "--against", "base", "--n", "1"]
    done = runner.invoke(app, [*args, "--max-new-tokens", "4", "--db", str(db)])
    assert done.exit_code == 0, done.output
    assert "stored 6 answers to 3 prompts" in done.output and "3 pairs" in done.output
    store = FeedbackStore(db)
    while (job := store.next_pair("alice")) is not None:  # alice always prefers the fine-tuned run
        side = "left" if job.left.model == model_id(sft_run) else "right"
        store.rate(job.pair_id, "alice", left_id=job.left.id, choice=side)
    out = tmp_path / "pairs.jsonl"
    # Two steps of training leave the run's seeded samples the same text as its base's: nothing to prefer.
    exported = runner.invoke(app, ["feedback", "export", "--format", "trl", "--db", str(db), "-o", str(out)])
    assert exported.exit_code == 1 and "identical: 3" in exported.output and not out.exists()
    rated = rated_store(tmp_path / "hand-rated")  # distinct answers, rated by hand (tests/unit)
    exported = runner.invoke(
        app, ["feedback", "export", "--format", "trl", "--db", str(rated), "-o", str(out)]
    )
    assert exported.exit_code == 0, exported.output
    assert "wrote 3 trl rows" in exported.output and len(out.read_text().splitlines()) == 3
    report = tmp_path / "win.json"
    compared = runner.invoke(
        app, ["compare-models", str(sft_run), "base", "--prompts", str(prompts), "--db", str(db),
              "--reward", str(reward_run), "--n-boot", "100", "--json", str(report)],
    )  # fmt: skip
    assert compared.exit_code == 0, compared.output
    assert "win-rate 1.000" in compared.output and "judged by 1 rater(s)" in compared.output
    assert json.loads(report.read_text())["judge"] == "ratings"  # ratings come before the reward model
    refused = runner.invoke(app, ["compare-models", str(sft_run), str(reward_run), "--prompts", str(prompts)])
    assert refused.exit_code == 1 and "no --reward model" in refused.output
