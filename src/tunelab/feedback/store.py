"""Samples, blind pairs and ratings, in the run registry's SQLite file (tables prefixed `fb_`).

The same file as the runs and the server's jobs, so `tunelab serve --root R` (its dashboard) and
`tunelab sample` (writing into R/runs/registry.sqlite) see one set of records. Every call opens
its own short connection, as runs/registry.py and serving/store.py do: the dashboard's request
threads and a sampling process never hold a lock longer than one call.

A pair is two samples of one prompt. Its order (a, b) is fixed when it is stored; what a rater sees
as left/right is drawn afresh for every assignment, so position cannot favour either model, and
`rate` maps the click back to a/b through the id that was shown on the left. Ratings are stored as
a / b / tie / both_bad.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from math import nan
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.runs.registry import connect

CHOICES = ("left", "right", "tie", "both_bad")  # what a rater clicks
LABELS = ("a", "b", "tie", "both_bad")  # what is stored
SCORES = range(1, 6)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fb_samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, prompt_key TEXT NOT NULL,
    prompt_json TEXT NOT NULL, model TEXT NOT NULL, text TEXT NOT NULL, temperature REAL NOT NULL,
    top_p REAL NOT NULL, max_new_tokens INTEGER NOT NULL, seed INTEGER, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fb_samples_by_prompt ON fb_samples (prompt_key, model);
CREATE TABLE IF NOT EXISTS fb_pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, prompt_key TEXT NOT NULL,
    a_id TEXT NOT NULL REFERENCES fb_samples (id), b_id TEXT NOT NULL REFERENCES fb_samples (id),
    created_at REAL NOT NULL, leased_by TEXT, leased_at REAL, UNIQUE (a_id, b_id)
);
CREATE TABLE IF NOT EXISTS fb_ratings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
    pair_id TEXT NOT NULL REFERENCES fb_pairs (id), rater TEXT NOT NULL, choice TEXT NOT NULL,
    score INTEGER, comment TEXT, created_at REAL NOT NULL, UNIQUE (pair_id, rater)
);
CREATE INDEX IF NOT EXISTS fb_ratings_by_pair ON fb_ratings (pair_id);
"""


@dataclass(frozen=True)
class Candidate:
    id: str  # sample id
    model: str  # run id/path or "base:<name>" -- never shown to raters
    text: str


@dataclass(frozen=True)
class Assignment:
    pair_id: str
    prompt: list[dict[str, str]]  # chat messages
    left: Candidate  # random order per assignment, blind
    right: Candidate


@dataclass(frozen=True)
class Sample:
    """One generated answer with everything needed to reproduce it."""

    prompt: list[dict[str, str]]
    model: str
    text: str
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None
    id: str = field(default_factory=lambda: new_id("smp_"))


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def prompt_key(prompt: Sequence[dict[str, str]]) -> str:
    """Samples of the same conversation share this key; pairs are only formed within one key."""
    canonical = json.dumps([{"role": m["role"], "content": m["content"]} for m in prompt], sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def pair_samples(samples: Sequence[Sample]) -> list[tuple[str, str]]:
    """The pairs worth rating among freshly drawn samples, prompt by prompt.

    Several models: every two models are compared, their i-th samples paired (n samples each give n
    pairs per prompt and model pair). One model: consecutive samples are paired, (0, 1), (2, 3), ...,
    so no sample is in two pairs and every rating is an independent comparison; an odd last one is
    left unpaired.
    """
    by_prompt: dict[str, dict[str, list[Sample]]] = {}
    for sample in samples:
        by_prompt.setdefault(prompt_key(sample.prompt), {}).setdefault(sample.model, []).append(sample)
    pairs: list[tuple[str, str]] = []
    for models in by_prompt.values():
        names = list(models)
        if len(names) == 1:
            only = models[names[0]]
            pairs += [(only[i].id, only[i + 1].id) for i in range(0, len(only) - 1, 2)]
            continue
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                pairs += [(x.id, y.id) for x, y in zip(models[first], models[second], strict=False)]
    return pairs


class FeedbackStore:
    def __init__(self, database: Path) -> None:
        self.database = Path(database)
        self.database.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.database) as conn:
            conn.executescript(_SCHEMA)

    # -- samples and pairs -----------------------------------------------------------------------

    def add_samples(self, samples: Sequence[Sample]) -> list[str]:
        """Store samples (one transaction); returns their ids in order."""
        created = time.time()
        rows = [
            (
                s.id,
                prompt_key(s.prompt),
                json.dumps(s.prompt),
                s.model,
                s.text,
                s.temperature,
                s.top_p,
                s.max_new_tokens,
                s.seed,
                created,
            )
            for s in samples
        ]
        with connect(self.database) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO fb_samples (id, prompt_key, prompt_json, model, text, temperature, top_p, "
                "max_new_tokens, seed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        return [s.id for s in samples]

    def add_pairs(self, pairs: Iterable[tuple[str, str]]) -> list[str]:
        """Store pairs of sample ids (a, b); both must exist and answer the same prompt."""
        pairs = list(pairs)
        with connect(self.database) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [(new_id("pair_"), _pair_key(conn, a, b), a, b, time.time()) for a, b in pairs]
            except TunelabError:
                conn.execute("ROLLBACK")
                raise
            # a pair stored before (the same two samples) is kept once; only new ids come back
            stored = [
                row[0]
                for row in rows
                if conn.execute(
                    "INSERT OR IGNORE INTO fb_pairs (id, prompt_key, a_id, b_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                ).rowcount
                == 1
            ]
            conn.execute("COMMIT")
        return stored

    def samples(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every stored sample (of one model), oldest first, with its prompt decoded."""
        query = "SELECT * FROM fb_samples" + (" WHERE model = ?" if model is not None else "")
        params = (model,) if model is not None else ()
        with connect(self.database) as conn:
            rows = [dict(row) for row in conn.execute(query + " ORDER BY seq", params)]
        for row in rows:
            row["prompt"] = json.loads(row.pop("prompt_json"))
        return rows

    # -- rating ------------------------------------------------------------------------------------

    def next_pair(self, rater: str, *, max_ratings: int = 2, lease_s: float = 300.0) -> Assignment | None:
        """The next pair for `rater`, leased to them, or None when nothing is left for them.

        A pair qualifies when this rater has never rated it, it has fewer than `max_ratings`
        ratings, and no other rater leased it in the last `lease_s` seconds. Fewest ratings first,
        so every pair is rated once before any is rated twice. The rater's earlier lease (a pair
        they skipped) is released. BEGIN IMMEDIATE takes the write lock before the read, so two
        raters asking at once are served one after the other and never get the same pair.
        """
        _check_rater(rater)
        now = time.time()
        with connect(self.database) as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(_NEXT_PAIR, (rater, rater, now - lease_s, max_ratings)).fetchone()
            if row is None:
                conn.execute("COMMIT")
                return None
            conn.execute(
                "UPDATE fb_pairs SET leased_by = NULL, leased_at = NULL WHERE leased_by = ? AND id != ?",
                (rater, row["id"]),
            )
            conn.execute(
                "UPDATE fb_pairs SET leased_by = ?, leased_at = ? WHERE id = ?", (rater, now, row["id"])
            )
            a, b = _candidate(conn, row["a_id"]), _candidate(conn, row["b_id"])
            prompt = json.loads(_sample_row(conn, row["a_id"])["prompt_json"])
            conn.execute("COMMIT")
        left, right = (a, b) if random.random() < 0.5 else (b, a)
        return Assignment(pair_id=row["id"], prompt=prompt, left=left, right=right)

    def rate(
        self,
        pair_id: str,
        rater: str,
        *,
        left_id: str,
        choice: str,
        score: int | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Record one rater's verdict on a pair; `left_id` is the sample that was shown on the left."""
        _check_rater(rater)
        _check_verdict(choice, score)
        with connect(self.database) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = _rating_row(conn, pair_id, rater, left_id, choice, score, comment)
            except TunelabError:
                conn.execute("ROLLBACK")
                raise
            conn.execute(
                "INSERT INTO fb_ratings (id, pair_id, rater, choice, score, comment, created_at) "
                "VALUES (:id, :pair_id, :rater, :choice, :score, :comment, :created_at)",
                row,
            )
            conn.execute(
                "UPDATE fb_pairs SET leased_by = NULL, leased_at = NULL WHERE id = ? AND leased_by = ?",
                (pair_id, rater),
            )
            conn.execute("COMMIT")
        return row

    # -- reading -----------------------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        with connect(self.database) as conn:
            pairs = conn.execute("SELECT COUNT(*) FROM fb_pairs").fetchone()[0]
            rated = conn.execute("SELECT COUNT(DISTINCT pair_id) FROM fb_ratings").fetchone()[0]
            raters = {
                r["rater"]: r["n"]
                for r in conn.execute(
                    "SELECT rater, COUNT(*) AS n FROM fb_ratings GROUP BY rater ORDER BY rater"
                )
            }
        return {"pairs": pairs, "rated_pairs": rated, "ratings": sum(raters.values()), "raters": raters}

    def agreement(self) -> dict[str, Any]:
        """Cohen's kappa between the first two ratings of every pair rated at least twice.

        Kappa compares two label sequences, so a pair's first rating goes to one side and its second
        to the other whoever the raters are (with a rotating pool this is the usual approximation).
        None under two such pairs, and None when kappa is undefined (every rating the same label:
        chance agreement is then 1 and kappa is 0/0).
        """
        from sklearn.exceptions import UndefinedMetricWarning
        from sklearn.metrics import cohen_kappa_score

        first, second = [], []
        for labels in self._labels_by_pair().values():
            if len(labels) >= 2:
                first.append(labels[0])
                second.append(labels[1])
        kappa = None
        if len(first) >= 2:
            with warnings.catch_warnings():  # the undefined case is answered with None below
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                value = float(cohen_kappa_score(first, second, labels=list(LABELS), replace_undefined_by=nan))
            kappa = None if value != value else value  # NaN: undefined
        return {"doubly_rated": len(first), "kappa": kappa}

    def ratings(self) -> list[dict[str, Any]]:
        """Every rating with its pair: prompt, both answers (text, model), the a/b verdict, oldest first."""
        with connect(self.database) as conn:
            rows = [dict(row) for row in conn.execute(_RATINGS)]
        return [_rating_view(row) for row in rows]

    def _labels_by_pair(self) -> dict[str, list[str]]:
        labels: dict[str, list[str]] = {}
        with connect(self.database) as conn:
            for row in conn.execute("SELECT pair_id, choice FROM fb_ratings ORDER BY seq"):
                labels.setdefault(row["pair_id"], []).append(row["choice"])
        return labels


# Pairs this rater may take: never rated by them, under the cap, and not held by someone else.
_NEXT_PAIR = """
SELECT p.*, COUNT(r.id) AS n_ratings FROM fb_pairs p LEFT JOIN fb_ratings r ON r.pair_id = p.id
WHERE NOT EXISTS (SELECT 1 FROM fb_ratings mine WHERE mine.pair_id = p.id AND mine.rater = ?)
  AND (p.leased_by IS NULL OR p.leased_by = ? OR p.leased_at < ?)
GROUP BY p.id HAVING COUNT(r.id) < ?
ORDER BY n_ratings, p.seq LIMIT 1
"""

_RATINGS = """
SELECT r.id AS rating_id, r.pair_id, r.rater, r.choice, r.score, r.comment, r.created_at,
       sa.prompt_json, p.prompt_key, sa.id AS a_id, sa.text AS a_text, sa.model AS a_model,
       sb.id AS b_id, sb.text AS b_text, sb.model AS b_model
FROM fb_ratings r JOIN fb_pairs p ON p.id = r.pair_id
JOIN fb_samples sa ON sa.id = p.a_id JOIN fb_samples sb ON sb.id = p.b_id
ORDER BY r.seq
"""


def _rating_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "rating_id": row["rating_id"],
        "pair_id": row["pair_id"],
        "prompt_key": row["prompt_key"],
        "prompt": json.loads(row["prompt_json"]),
        "a": {"id": row["a_id"], "text": row["a_text"], "model": row["a_model"]},
        "b": {"id": row["b_id"], "text": row["b_text"], "model": row["b_model"]},
        "choice": row["choice"],
        "score": row["score"],
        "comment": row["comment"],
        "rater": row["rater"],
        "created_at": row["created_at"],
    }


def _check_rater(rater: str) -> None:
    if not isinstance(rater, str) or not rater.strip():
        raise TunelabError("a rater needs a name", fix="pass the rater's name or id, e.g. rater='alice'")


def _check_verdict(choice: str, score: int | None) -> None:
    if choice not in CHOICES:
        raise TunelabError(f"unknown choice {choice!r}", fix=f"choose one of {', '.join(CHOICES)}")
    # bool is an int in Python; True as a score is a caller's bug, not a rating of 1
    if score is not None and (isinstance(score, bool) or not isinstance(score, int) or score not in SCORES):
        raise TunelabError(f"score {score!r} is not an integer from 1 to 5", fix="leave it out or give 1-5")


def _rating_row(
    conn: sqlite3.Connection,
    pair_id: str,
    rater: str,
    left_id: str,
    choice: str,
    score: int | None,
    comment: str | None,
) -> dict[str, Any]:
    pair = conn.execute("SELECT a_id, b_id FROM fb_pairs WHERE id = ?", (pair_id,)).fetchone()
    if pair is None:
        raise TunelabError(f"unknown pair {pair_id!r}", fix="rate a pair that next_pair handed out")
    if left_id not in (pair["a_id"], pair["b_id"]):
        raise TunelabError(
            f"sample {left_id!r} is not in pair {pair_id!r}", fix="pass the left candidate's id"
        )
    seen = conn.execute(
        "SELECT 1 FROM fb_ratings WHERE pair_id = ? AND rater = ?", (pair_id, rater)
    ).fetchone()
    if seen:
        raise TunelabError(f"{rater} has already rated pair {pair_id}", fix="each rater rates a pair once")
    left_is_a = left_id == pair["a_id"]
    label = {"left": "a" if left_is_a else "b", "right": "b" if left_is_a else "a"}.get(choice, choice)
    return {
        "id": new_id("rating_"),
        "pair_id": pair_id,
        "rater": rater,
        "choice": label,
        "score": score,
        "comment": comment,
        "created_at": time.time(),
    }


def _pair_key(conn: sqlite3.Connection, a: str, b: str) -> str:
    if a == b:
        raise TunelabError(f"a pair needs two different samples, got {a!r} twice")
    first, second = _sample_row(conn, a), _sample_row(conn, b)
    if first["prompt_key"] != second["prompt_key"]:
        raise TunelabError(f"samples {a} and {b} answer different prompts", fix="pair answers to one prompt")
    return str(first["prompt_key"])


def _sample_row(conn: sqlite3.Connection, sample_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM fb_samples WHERE id = ?", (sample_id,)).fetchone()
    if row is None:
        raise TunelabError(f"unknown sample {sample_id!r}", fix="store samples before pairing them")
    return row


def _candidate(conn: sqlite3.Connection, sample_id: str) -> Candidate:
    row = _sample_row(conn, sample_id)
    return Candidate(id=row["id"], model=row["model"], text=row["text"])
