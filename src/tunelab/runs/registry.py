"""The run registry: one SQLite row per run in <output.dir>/registry.sqlite, for list/show/compare.

Runs started from the CLI, a server and a hyper-parameter search write the same file from several
processes at once, so every call opens its own connection, does one short transaction and closes it
again: no lock outlives a call. WAL lets readers go on while one process writes, and `busy_timeout`
makes a writer wait for the write lock instead of failing. WAL needs shared memory, so the registry
belongs on a local disk, not NFS (there SQLite would silently stay in rollback-journal mode).

summary.json stays the source of truth for one run; the registry is an index over many, so a row is
simply the latest summary upserted under the run folder's name.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import TunelabError
from tunelab.runs.rundir import read_summary
from tunelab.runs.summary import RunSummary
from tunelab.tasks.registry import is_task, task_spec

REGISTRY = "registry.sqlite"
SCHEMA_VERSION = 2  # 2: tags_json
BUSY_TIMEOUT_S = 30.0
# Keys of the resolved recipe that differ between any two runs (or never matter) in a comparison.
IGNORED_RECIPE_KEYS = frozenset({"name", "output.dir"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT,
    task TEXT,
    method TEXT,
    base_model TEXT,
    run_dir TEXT,
    recipe_hash TEXT,
    data_hash TEXT,
    git_commit TEXT,
    status TEXT,
    started_at TEXT,
    started_unix REAL,
    finished_at TEXT,
    wall_s REAL,
    steps INTEGER,
    tokens INTEGER,
    peak_mem_mb REAL,
    trainable_params INTEGER,
    total_params INTEGER,
    metrics_json TEXT,
    baseline_json TEXT,
    error TEXT,
    recipe_yaml TEXT,
    tags_json TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_unix DESC, run_id DESC);
"""

# Every column of `runs`, in table order; the upsert and the row decoding are built from this list.
_COLUMNS = (
    "run_id",
    "name",
    "task",
    "method",
    "base_model",
    "run_dir",
    "recipe_hash",
    "data_hash",
    "git_commit",
    "status",
    "started_at",
    "started_unix",
    "finished_at",
    "wall_s",
    "steps",
    "tokens",
    "peak_mem_mb",
    "trainable_params",
    "total_params",
    "metrics_json",
    "baseline_json",
    "error",
    "recipe_yaml",
    "tags_json",
)
# On conflict most columns take the newest summary's value; these two keep what the first call knew:
# the commit the run started from (the tree may move on while it trains) and the data hash (the
# closing call may not recompute it).
_KEEP_ON_UPDATE = {
    "git_commit": "COALESCE(runs.git_commit, excluded.git_commit)",
    "data_hash": "COALESCE(excluded.data_hash, runs.data_hash)",
}
_UPSERT = (
    f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT(run_id) DO UPDATE SET "
    + ", ".join(f"{c} = {_KEEP_ON_UPDATE.get(c, f'excluded.{c}')}" for c in _COLUMNS[1:])
)
_NEWEST_FIRST = "ORDER BY started_unix IS NULL, started_unix DESC, run_id DESC"


def registry_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / REGISTRY


def recipe_hash(recipe_yaml: str) -> str:
    return hashlib.sha256(recipe_yaml.encode("utf-8")).hexdigest()


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the git repo around `cwd` (default: the current directory), `-dirty` if tracked files changed.

    None when there is no repo, no commit yet, or no git at all: provenance is a nicety, never a reason
    for a run to fail.
    """
    head = _git(["rev-parse", "--verify", "HEAD"], cwd)
    if not head:
        return None
    # Untracked files are left out: the run folder itself usually sits untracked inside the repo
    # (output.dir defaults to ./runs), which would mark every run dirty.
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return f"{head}-dirty" if status else head


def _git(args: list[str], cwd: Path | None) -> str | None:
    # --no-optional-locks: `git status` would otherwise refresh the index and could collide with the
    # user's own git commands (index.lock) while a run starts.
    command = ["git", "--no-optional-locks", *args]
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def record_run(
    output_dir: str | Path,
    *,
    run_id: str,
    recipe_yaml: str,
    data_hash: str | None,
    summary: RunSummary,
) -> None:
    """Insert or update the run's row from the run's summary (at start, then at the end)."""
    if not run_id:
        raise TunelabError("a run needs a non-empty run_id to be recorded")
    values = _row_values(run_id, recipe_yaml, data_hash, summary, git_commit())
    path = registry_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path) as conn:
        conn.execute(_UPSERT, values)


def _row_values(
    run_id: str, recipe_yaml: str, data_hash: str | None, summary: RunSummary, commit: str | None
) -> tuple[Any, ...]:
    row = {
        "run_id": run_id,
        "name": summary.name,
        "task": summary.task,
        "method": summary.method,
        "base_model": summary.model,
        "run_dir": summary.run_dir,
        "recipe_hash": recipe_hash(recipe_yaml),
        "data_hash": data_hash,
        "git_commit": commit,
        "status": summary.status,
        "started_at": summary.started_at,
        "started_unix": _timestamp(summary.started_at),
        "finished_at": summary.finished_at,
        "wall_s": summary.wall_s,
        "steps": summary.steps,
        "tokens": summary.tokens,
        "peak_mem_mb": summary.peak_mem_mb,
        "trainable_params": summary.trainable_params,
        "total_params": summary.total_params,
        "metrics_json": json.dumps(summary.metrics or {}),
        # The column keeps its first name; it holds the untrained model's scores (before_training).
        "baseline_json": json.dumps(summary.before_training or {}),
        "error": summary.error,
        "recipe_yaml": recipe_yaml,
        "tags_json": json.dumps(summary.tags or {}),
    }
    return tuple(row[column] for column in _COLUMNS)


def _timestamp(started_at: Any) -> float | None:
    # started_at carries the local UTC offset (lifecycle.now); sorting the text would misorder runs
    # across a daylight-saving change or between machines, so we also keep seconds since the epoch.
    if not isinstance(started_at, str):
        return None
    try:
        return datetime.strptime(started_at, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        try:
            return datetime.fromisoformat(started_at).timestamp()
        except ValueError:
            return None


def list_runs(output_dir: str | Path, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Every recorded run, newest first; an output folder without a registry has none."""
    path = registry_path(output_dir)
    if not path.is_file():
        return []  # reading must not create a registry (a typo in --output-dir would leave one behind)
    query = f"SELECT * FROM runs {_NEWEST_FIRST}"
    params: tuple[int, ...] = ()
    if limit is not None:
        query += " LIMIT ?"
        params = (max(limit, 0),)
    with connect(path) as conn:
        return [_with_live_status(_decode(row)) for row in conn.execute(query, params)]


def main_metric(run: dict[str, Any]) -> tuple[str, float] | None:
    """A listed run's main metric as (name, value), e.g. ("test_exact_match", 0.8): the first of its task's
    headline metrics (tasks/registry.py) the run has, on its test split, else validation; None if none."""
    metrics, task = run.get("metrics") or {}, run.get("task")
    names = task_spec(str(task)).main_metrics if is_task(task) else ("loss",)  # a task no longer registered
    for name in names:
        for key in (f"test_{name}", f"val_{name}"):
            if isinstance(metrics.get(key), int | float) and not isinstance(metrics[key], bool):
                return key, float(metrics[key])
    return None


def _with_live_status(run: dict[str, Any]) -> dict[str, Any]:
    """A run recorded as running whose process is gone (kill -9, a crash of the machine) is shown as
    interrupted, with the steps and checkpoint its summary.json last recorded."""
    if run.get("status") != "running" or not run.get("run_dir"):
        return run
    try:
        summary = read_summary(Path(run["run_dir"]))
    except (OSError, ValueError, TunelabError):
        return run
    pid, host = summary.pid, summary.host
    if not isinstance(pid, int) or host != socket.gethostname() or process_alive(pid):
        return run  # alive, or on another machine: this one cannot tell
    checkpoint = summary.last_checkpoint
    return {
        **run,
        "status": "interrupted",
        "steps": summary.steps,
        "wall_s": summary.wall_s,
        "error": f"process {pid} is gone; resume from {checkpoint}"
        if checkpoint
        else f"process {pid} is gone",
    }


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process has the pid
    return True


def get_run(output_dir: str | Path, run_id: str) -> dict[str, Any]:
    """The run with this id, or with this unique id prefix; a miss names the closest recorded ids."""
    path = registry_path(output_dir)
    if not run_id:
        raise TunelabError("no run id given", fix="pass a run id (or a unique prefix of one)")
    if not path.is_file():
        raise TunelabError(f"no run {run_id!r}: no runs are recorded in {path.parent}")
    with connect(path) as conn:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            return _decode(row)
        ids = [r[0] for r in conn.execute(f"SELECT run_id FROM runs {_NEWEST_FIRST}")]
        match = _resolve_prefix(run_id, ids, path)
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (match,)).fetchone()
    if row is None:  # deleted between the two reads by another process
        raise TunelabError(f"no run {run_id!r} in {path}")
    return _decode(row)


def _resolve_prefix(run_id: str, ids: list[str], path: Path) -> str:
    matches = [i for i in ids if i.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise TunelabError(
            f"run id prefix {run_id!r} is ambiguous: {len(matches)} runs start with it",
            problems=matches[:10],
            fix="give more of the run id",
        )
    close = difflib.get_close_matches(run_id, ids, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else None
    raise TunelabError(f"no run {run_id!r} in {path}", fix=hint or "list the recorded runs to find its id")


def compare_runs(output_dir: str | Path, run_ids: Sequence[str]) -> dict[str, Any]:
    """Final metrics side by side, and the recipe settings that differ between the runs."""
    if not run_ids:
        raise TunelabError("compare needs at least one run id")
    runs = [get_run(output_dir, run_id) for run_id in run_ids]
    metrics = [_flatten(run["metrics"]) for run in runs]
    recipes = [recipe_fields(run) for run in runs]
    return {
        "runs": [run["run_id"] for run in runs],
        "metrics": {key: [m.get(key) for m in metrics] for key in _union_keys(metrics)},
        "recipe_differences": _differences(recipes),
    }


def recipe_fields(run: dict[str, Any]) -> dict[str, Any]:
    """A recorded run's recipe as dotted paths (`train.lr`), for showing recipes side by side, and the
    content of its data files (`data.train sha256`): the same path may hold other data in another run."""
    return {**_flatten(_load_recipe(run)), **_data_fields(run)}


def _data_fields(run: dict[str, Any]) -> dict[str, Any]:
    """Each data file's sha256 from the run's summary.json; where that is gone, the registry's digest of
    all of them together (runs from before per-file digests were kept have only that)."""
    try:
        files = read_summary(Path(run["run_dir"])).data_files if run.get("run_dir") else {}
    except (OSError, ValueError, TunelabError):
        files = {}
    if files:
        return {f"{role} sha256": digest for role, digest in files.items()}
    return {"data sha256 (all files)": run["data_hash"]} if run.get("data_hash") else {}


def _load_recipe(run: dict[str, Any]) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(run.get("recipe_yaml") or "")
    except yaml.YAMLError as exc:
        raise TunelabError(f"run {run['run_id']!r}: its recorded recipe is not valid YAML: {exc}") from None
    return loaded if isinstance(loaded, dict) else {}


def _flatten(tree: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted paths; lists and scalars are leaves; empty mappings vanish."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _union_keys(dicts: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for d in dicts for key in d))  # first-seen order, like the recipes


def _differences(recipes: list[dict[str, Any]]) -> dict[str, list[Any]]:
    differences: dict[str, list[Any]] = {}
    for path in _union_keys(recipes):
        if path in IGNORED_RECIPE_KEYS:
            continue
        values = [recipe.get(path) for recipe in recipes]
        # Canonical JSON, so 1 and True (equal in Python) or 1 and 1.0 still count as a difference.
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            differences[path] = values
    return differences


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    """Plain aligned text: a header, a rule, one line per row; numbers right-aligned, None as '-'."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]
    numeric = [_is_numeric_column(rows, column) for column in columns]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip()

    header = line(list(columns))
    return [header, line(["-" * w for w in widths]), *(line(values) for values in cells)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _is_numeric_column(rows: list[dict[str, Any]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


# ---------------------------------------------------------------------------------------------
# connections and schema


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    # isolation_level=None: autocommit, so a single statement is its own short transaction and
    # multi-statement work opts in with BEGIN IMMEDIATE (see _ensure_schema).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a power cut may lose the last row only
        _ensure_schema(conn)
        yield conn
    finally:
        conn.close()


def _enable_wal(conn: sqlite3.Connection) -> None:
    # WAL is a property of the file, so this is a cheap no-op after the first time. The switch itself
    # upgrades a shared lock to an exclusive one; when several processes create the registry together,
    # SQLite answers "locked" at once rather than wait on busy_timeout (waiting could deadlock), so
    # we retry with the same patience. Seen in the concurrency test, not just in theory.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _ensure_schema(conn: sqlite3.Connection) -> None:
    if _schema_version(conn) == SCHEMA_VERSION:
        return  # the common case: one read, no write lock
    # BEGIN IMMEDIATE takes the write lock first, so two processes creating the registry together
    # queue on busy_timeout instead of one failing when it upgrades a read to a write.
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(conn) == 1:  # a registry from before tags: the column is added, rows kept
            conn.execute("ALTER TABLE runs ADD COLUMN tags_json TEXT")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        version = _schema_version(conn)
        if version != SCHEMA_VERSION:
            raise TunelabError(
                f"the run registry has schema version {version}; this tunelab reads version {SCHEMA_VERSION}",
                fix="upgrade tunelab, or point output.dir at another folder",
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _schema_version(conn: sqlite3.Connection) -> int | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return int(row[0]) if row is not None else None


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    """A row as plain JSON-ready data: metrics and before_training decoded, internal sort key dropped."""
    run = dict(row)  # sqlite3.Row is a mapping by column name
    run.pop("started_unix")
    run["metrics"] = json.loads(run.pop("metrics_json") or "{}")
    run["before_training"] = json.loads(run.pop("baseline_json") or "{}")  # the column keeps its first name
    run["tags"] = json.loads(run.pop("tags_json") or "{}")
    return run
