"""The run registry: upserts, ordering, id lookup, compare, concurrent writers, WAL, git provenance."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.runs import registry
from tunelab.runs.registry import (
    compare_runs,
    format_table,
    get_run,
    git_commit,
    list_runs,
    recipe_hash,
    record_run,
    registry_path,
)
from tunelab.runs.summary import RunSummary

RECIPE: dict[str, Any] = {
    "name": "sentiment",
    "task": "classify",
    "model": {"name_or_path": "tiny-llama", "dtype": "float32"},
    "method": {"name": "lora", "r": 8, "target_modules": ["q_proj", "v_proj"]},
    "train": {"lr": 2e-4, "epochs": 1, "seed": 0},
    "output": {"dir": "runs"},
}


def recipe_yaml(**overrides: Any) -> str:
    """The base recipe with dotted-path overrides, dumped the way config.recipe_to_yaml dumps it."""
    recipe = json.loads(json.dumps(RECIPE))
    for path, value in overrides.items():
        *parents, leaf = path.split("__")
        node = recipe
        for key in parents:
            node = node[key]
        node[leaf] = value
    return yaml.safe_dump(recipe, sort_keys=False)


def summary(run_id: str, started_at: str = "2026-11-22T10:18:57+0000", **fields: Any) -> RunSummary:
    """What a run's summary.json holds at the start, plus any end-of-run fields (in summary.json's
    older names, which RunSummary reads)."""
    return RunSummary.from_json(
        {
            "name": "sentiment",
            "task": "classify",
            "method": "lora",
            "model": "tiny-llama",
            "run_dir": f"runs/{run_id}",
            "status": "running",
            "started_at": started_at,
            "steps": 0,
            "tokens": 0,
            "wall_s": 0.0,
            "peak_mem_mb": 0.0,
            "trainable_params": 1000,
            "total_params": 50000,
            "examples": {"train": 10, "val": 2},
            "baseline": {"val_accuracy": 0.5},
            "metrics": {},
            **fields,
        }
    )


def record(
    out: Path, run_id: str, *, yaml_text: str | None = None, data_hash: str | None = "d1", **fields: Any
) -> None:
    record_run(
        out,
        run_id=run_id,
        recipe_yaml=yaml_text or recipe_yaml(),
        data_hash=data_hash,
        summary=summary(run_id, **fields),
    )


@pytest.fixture
def out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # record_run asks git about the current directory; a fixed answer keeps these tests fast and exact.
    monkeypatch.setattr(registry, "git_commit", lambda cwd=None: "abc123")
    return tmp_path / "runs"


def rows(out: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(registry_path(out)) as conn:
        found = conn.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
    conn.close()
    return found


# ---------------------------------------------------------------------------------------------
# record_run / list_runs / get_run


def test_start_then_end_upserts_one_row_with_the_final_fields(out: Path) -> None:
    run_id = "sentiment-lora-20261122-101857"
    record(out, run_id)
    assert get_run(out, run_id)["status"] == "running"

    final = {"val_accuracy": 0.9, "val_loss": 0.3}
    record(
        out,
        run_id,
        status="completed",
        finished_at="2026-11-22T10:30:00+0000",
        steps=40,
        tokens=12345,
        wall_s=703.5,
        peak_mem_mb=812.0,
        metrics=final,
    )

    assert rows(out) == [(run_id, "completed")]
    run = get_run(out, run_id)
    assert run["run_id"] == run_id
    assert run["status"] == "completed"
    assert run["finished_at"] == "2026-11-22T10:30:00+0000"
    assert (run["steps"], run["tokens"], run["wall_s"], run["peak_mem_mb"]) == (40, 12345, 703.5, 812.0)
    assert run["metrics"] == final
    assert run["before_training"] == {"val_accuracy": 0.5}
    assert run["base_model"] == "tiny-llama"
    assert run["recipe_hash"] == hashlib.sha256(recipe_yaml().encode()).hexdigest()
    assert run["recipe_yaml"] == recipe_yaml()
    assert run["git_commit"] == "abc123"
    json.dumps(run)  # everything handed back is JSON-ready


def test_failed_run_keeps_its_error(out: Path) -> None:
    record(out, "r1")
    record(out, "r1", status="failed", error="CUDA out of memory")
    run = get_run(out, "r1")
    assert (run["status"], run["error"]) == ("failed", "CUDA out of memory")


def test_end_call_keeps_the_starting_commit_and_data_hash(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record(out, "r1", data_hash="sha-of-data")
    monkeypatch.setattr(registry, "git_commit", lambda cwd=None: "moved-on")
    record(out, "r1", data_hash=None, status="completed")
    run = get_run(out, "r1")
    assert (run["git_commit"], run["data_hash"], run["status"]) == ("abc123", "sha-of-data", "completed")


def test_list_runs_newest_first_with_ties_broken_by_run_id(out: Path) -> None:
    record(out, "b-old", started_at="2026-11-20T09:00:00+0000")
    record(out, "a-new", started_at="2026-11-22T09:00:00+0000")
    record(out, "a-same-second", started_at="2026-11-21T09:00:00+0000")
    record(out, "a-same-second-2", started_at="2026-11-21T09:00:00+0000")
    # 03:30 at +02:00 is 01:30 UTC, before 02:00 UTC, although its text sorts later: the order must
    # follow the instant, not the string (a daylight-saving change, or two machines).
    record(out, "dst-late-text", started_at="2026-11-23T03:30:00+0200")
    record(out, "utc-early-text", started_at="2026-11-23T02:00:00+0000")

    ids = [run["run_id"] for run in list_runs(out)]
    assert ids == ["utc-early-text", "dst-late-text", "a-new", "a-same-second-2", "a-same-second", "b-old"]
    assert [run["run_id"] for run in list_runs(out, limit=2)] == ["utc-early-text", "dst-late-text"]


def test_reading_an_output_folder_without_registry_creates_nothing(tmp_path: Path) -> None:
    assert list_runs(tmp_path) == []
    with pytest.raises(TunelabError, match="no runs are recorded"):
        get_run(tmp_path, "anything")
    assert not registry_path(tmp_path).exists()


def test_get_run_by_id_and_by_unique_prefix(out: Path) -> None:
    record(out, "sentiment-lora-20261122-101857")
    record(out, "summarise-full-20261122-111111")
    assert get_run(out, "sentiment-lora-20261122-101857")["run_id"] == "sentiment-lora-20261122-101857"
    assert get_run(out, "sen")["run_id"] == "sentiment-lora-20261122-101857"
    assert get_run(out, "summ")["run_id"] == "summarise-full-20261122-111111"


def test_exact_id_wins_over_longer_ids_sharing_it_as_prefix(out: Path) -> None:
    record(out, "run-20261122-101857")
    record(out, "run-20261122-101857-2")
    assert get_run(out, "run-20261122-101857")["run_id"] == "run-20261122-101857"


def test_unknown_id_is_named_and_the_closest_id_suggested(out: Path) -> None:
    record(out, "sentiment-lora-20261122-101857")
    record(out, "other-full-20250101-000000")
    with pytest.raises(TunelabError) as info:
        get_run(out, "sentimnet-lora-20261122-101857")
    message = str(info.value)
    assert "sentimnet-lora-20261122-101857" in message
    assert "did you mean 'sentiment-lora-20261122-101857'" in message
    assert "other-full" not in message


def test_ambiguous_prefix_raises_and_lists_the_candidates(out: Path) -> None:
    record(out, "sentiment-lora-1")
    record(out, "sentiment-lora-2")
    with pytest.raises(TunelabError, match="ambiguous") as info:
        get_run(out, "sentiment-lora")
    assert "sentiment-lora-1" in str(info.value)
    assert "sentiment-lora-2" in str(info.value)


# ---------------------------------------------------------------------------------------------
# compare_runs


def test_compare_shows_only_the_recipe_setting_that_differs_and_metrics_side_by_side(out: Path) -> None:
    first = yaml.safe_dump({**RECIPE, "name": "lr-a", "output": {"dir": "/tmp/a"}}, sort_keys=False)
    second_recipe = json.loads(json.dumps(RECIPE))
    second_recipe.update(name="lr-b", output={"dir": "/tmp/b"})
    second_recipe["train"]["lr"] = 1e-3
    second = yaml.safe_dump(second_recipe, sort_keys=False)
    record(out, "lr-a-1", yaml_text=first, metrics={"val_loss": 0.5, "val_accuracy": 0.8})
    record(out, "lr-b-1", yaml_text=second, metrics={"val_loss": 0.4})

    result = compare_runs(out, ["lr-a-1", "lr-b"])  # a prefix works here too

    assert result["runs"] == ["lr-a-1", "lr-b-1"]
    assert result["recipe_differences"] == {"train.lr": [2e-4, 1e-3]}
    assert result["metrics"] == {"val_loss": [0.5, 0.4], "val_accuracy": [0.8, None]}
    json.dumps(result)


def test_compare_reports_keys_present_in_one_recipe_only_and_lists_as_values(out: Path) -> None:
    record(out, "a", yaml_text=recipe_yaml())
    record(out, "b", yaml_text=recipe_yaml(method__target_modules=["q_proj"], train__warmup=10))
    diff = compare_runs(out, ["a", "b"])["recipe_differences"]
    assert diff == {"method.target_modules": [["q_proj", "v_proj"], ["q_proj"]], "train.warmup": [None, 10]}


def test_compare_of_identical_recipes_has_no_differences(out: Path) -> None:
    record(out, "a")
    record(out, "b")
    assert compare_runs(out, ["a", "b"])["recipe_differences"] == {}


def test_compare_of_an_unknown_run_raises(out: Path) -> None:
    record(out, "a")
    with pytest.raises(TunelabError, match="'zzz'"):
        compare_runs(out, ["a", "zzz"])


# ---------------------------------------------------------------------------------------------
# concurrency, WAL, schema


WRITERS = 4
RUNS_PER_WRITER = 25


def _write_runs(out: str, writer: int, barrier: Any) -> None:
    """One writer process: start and finish 25 runs, all writers released together by the barrier."""
    # git is asked twice per call otherwise; this test is about the database, not provenance.
    registry.git_commit = lambda cwd=None: "abc123"  # type: ignore[assignment]
    barrier.wait()
    for i in range(RUNS_PER_WRITER):
        run_id = f"w{writer}-run{i:02d}"
        start = summary(run_id, started_at=f"2026-11-22T10:{writer:02d}:{i:02d}+0000")
        record_run(out, run_id=run_id, recipe_yaml=recipe_yaml(), data_hash="d", summary=start)
        record_run(
            out,
            run_id=run_id,
            recipe_yaml=recipe_yaml(),
            data_hash="d",
            summary=dataclasses.replace(start, status="completed"),
        )


def test_concurrent_writers_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    # The registry does not exist yet: the writers also race to create it and switch it to WAL.
    # fork where there is one: the writers start in milliseconds instead of each importing pytest
    # (seconds on a small, busy CI machine); they only touch sqlite3, so no inherited state matters.
    ctx = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    barrier = ctx.Barrier(WRITERS)
    workers = [ctx.Process(target=_write_runs, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    elapsed = time.perf_counter() - started

    assert [w.exitcode for w in workers] == [0] * WRITERS
    runs = list_runs(tmp_path)
    assert len(runs) == WRITERS * RUNS_PER_WRITER
    assert {run["status"] for run in runs} == {"completed"}
    assert elapsed < 30, f"{WRITERS} writers took {elapsed:.1f}s"


def test_registry_is_in_wal_mode(out: Path) -> None:
    record(out, "a")
    conn = sqlite3.connect(registry_path(out))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_schema_version_is_recorded_once_and_reopening_is_idempotent(out: Path) -> None:
    record(out, "a")
    record(out, "b")
    assert len(list_runs(out)) == 2
    conn = sqlite3.connect(registry_path(out))
    try:
        versions = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    finally:
        conn.close()
    assert versions == [(str(registry.SCHEMA_VERSION),)]


def test_registry_from_a_newer_tunelab_is_refused(out: Path) -> None:
    record(out, "a")
    with sqlite3.connect(registry_path(out)) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(TunelabError, match="schema version 99"):
        list_runs(out)


# ---------------------------------------------------------------------------------------------
# hashes, git, table


def test_recipe_hash_is_the_sha256_of_the_text() -> None:
    assert recipe_hash("a: 1\n") == hashlib.sha256(b"a: 1\n").hexdigest()
    assert recipe_hash("a: 1\n") != recipe_hash("a: 2\n")


def _git(repo: Path, *args: str) -> str:
    config = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    done = subprocess.run(["git", *config, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_none_outside_a_repo_then_sha_then_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # never find a repo above tmp_path
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) is None

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    assert git_commit(repo) is None  # a repo without commits has no HEAD yet
    (repo / "train.py").write_text("print('v1')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    assert len(sha) == 40
    assert git_commit(repo) == sha

    (repo / "runs").mkdir()  # the run folder lives untracked inside the repo: still clean
    (repo / "runs" / "summary.json").write_text("{}")
    assert git_commit(repo) == sha

    (repo / "train.py").write_text("print('v2')\n")
    assert git_commit(repo) == f"{sha}-dirty"

    monkeypatch.chdir(repo)
    assert git_commit() == f"{sha}-dirty"  # default: the current directory


def test_git_commit_without_git_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable to be found
    assert git_commit(tmp_path) is None


def test_format_table_aligns_columns() -> None:
    rows = [
        {"run_id": "a-long-run-id", "status": "completed", "wall_s": 12.3456, "tokens": 1200},
        {"run_id": "b", "status": "running", "wall_s": None, "tokens": 5},
    ]
    lines = format_table(rows, ["run_id", "status", "wall_s", "tokens"])
    assert lines == [
        "run_id         status     wall_s  tokens",
        "-------------  ---------  ------  ------",
        "a-long-run-id  completed   12.35    1200",
        "b              running         -       5",
    ]
    assert format_table([], ["run_id"]) == ["run_id", "------"]


def test_a_version_1_registry_gains_the_tags_column_and_keeps_its_rows(out: Path) -> None:
    import sqlite3

    path = registry.registry_path(out)
    out.mkdir(parents=True, exist_ok=True)
    v1_schema = registry._SCHEMA.replace(",\n    tags_json TEXT", "")
    with sqlite3.connect(path) as conn:
        conn.executescript(v1_schema)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO runs (run_id, name, status) VALUES ('old-run', 'old', 'completed')")
    (old,) = registry.list_runs(out)
    assert old["run_id"] == "old-run" and old["tags"] == {}
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
