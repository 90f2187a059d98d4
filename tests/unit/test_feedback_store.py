"""The feedback store: blind assignment, leases, ratings mapped back to a/b, progress and agreement."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from tunelab.errors import TunelabError
from tunelab.feedback.store import FeedbackStore, Sample, pair_samples
from tunelab.runs.registry import connect


def _prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


def _sample(i: int, model: str, text: str = "") -> Sample:
    return Sample(_prompt(i), model, text or f"{model} answers {i}", 0.8, 0.95, 16, 0)


def _store(tmp_path: Path, prompts: int = 3) -> FeedbackStore:
    store = FeedbackStore(tmp_path / "registry.sqlite")
    samples = [_sample(i, m) for i in range(prompts) for m in ("run-a", "run-b")]
    store.add_samples(samples)
    store.add_pairs(pair_samples(samples))
    return store


def _pair_ids(store: FeedbackStore) -> list[str]:
    """The stored pairs' ids, in the order they were stored."""
    with connect(store.database) as conn:
        return [row["id"] for row in conn.execute("SELECT id FROM fb_pairs ORDER BY seq")]


def _leases(store: FeedbackStore) -> dict[str, tuple[str | None, float | None]]:
    """Each pair's lease as stored: (leased_by, leased_at)."""
    with connect(store.database) as conn:
        return {
            row["id"]: (row["leased_by"], row["leased_at"]) for row in conn.execute("SELECT * FROM fb_pairs")
        }


def _click(store: FeedbackStore, rater: str, pick: str = "a", **extra) -> dict:
    """Rate the next pair for `rater`, choosing the side that holds a's (or b's) model."""
    job = store.next_pair(rater)
    assert job is not None
    wanted = "run-a" if pick == "a" else "run-b"
    side = "left" if job.left.model == wanted else "right"
    return store.rate(job.pair_id, rater, left_id=job.left.id, choice=extra.pop("choice", side), **extra)


def test_pairs_join_models_prompt_by_prompt_or_consecutive_samples_of_one_model() -> None:
    two = [_sample(0, "x"), _sample(0, "y"), _sample(1, "x"), _sample(1, "y")]
    assert pair_samples(two) == [(two[0].id, two[1].id), (two[2].id, two[3].id)]
    one = [_sample(0, "x", f"t{i}") for i in range(5)]
    assert pair_samples(one) == [(one[0].id, one[1].id), (one[2].id, one[3].id)]


def test_add_pairs_refuses_samples_of_different_prompts(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "r.sqlite")
    first, second = _sample(0, "x"), _sample(1, "y")
    store.add_samples([first, second])
    with pytest.raises(TunelabError, match="different prompts"):
        store.add_pairs([(first.id, second.id)])
    with pytest.raises(TunelabError, match="unknown sample"):
        store.add_pairs([(first.id, "smp_missing")])


def test_a_rater_never_gets_a_pair_twice_and_the_left_click_maps_back_to_a_or_b(tmp_path: Path) -> None:
    store = _store(tmp_path)
    seen = set()
    for _ in range(3):
        row = _click(store, "alice", "a")
        assert row["choice"] == "a"  # whichever side run-a was shown on
        assert row["pair_id"] not in seen
        seen.add(row["pair_id"])
    assert store.next_pair("alice") is None
    assert {r["a"]["model"] for r in store.ratings()} == {"run-a"}
    assert all(r["choice"] == "a" and r["rater"] == "alice" for r in store.ratings())


def test_left_and_right_are_drawn_per_assignment(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=1)
    lefts = {store.next_pair(f"rater{i}", max_ratings=99, lease_s=0).left.model for i in range(40)}
    assert lefts == {"run-a", "run-b"}


def test_single_coverage_comes_before_double_and_max_ratings_caps(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = {_click(store, "alice")["pair_id"] for _ in range(2)}
    # bob first gets the pair nobody rated yet, then alice's
    assert _click(store, "bob")["pair_id"] not in first
    assert _click(store, "bob")["pair_id"] in first
    _click(store, "carol")
    _click(store, "carol")  # the two pairs rated once so far
    assert store.next_pair("carol") is None  # every pair has its two ratings
    assert store.next_pair("dave") is None
    # A third rating allowed: every pair has two, so the first stored comes first.
    assert store.next_pair("dave", max_ratings=3).pair_id == _pair_ids(store)[0]
    assert store.progress() == {
        "pairs": 3,
        "rated_pairs": 3,
        "ratings": 6,
        "raters": {"alice": 2, "bob": 2, "carol": 2},
    }


def test_a_leased_pair_goes_to_no_one_else_until_the_lease_runs_out(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=1)
    held = store.next_pair("alice")
    assert held is not None
    assert store.next_pair("bob") is None
    assert store.next_pair("alice").pair_id == held.pair_id  # a reload shows alice the same pair
    assert store.next_pair("bob", lease_s=0.0).pair_id == held.pair_id  # alice's lease is stale at 0 s


def test_rating_releases_the_lease_for_the_second_rater(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=1)
    (pair_id,) = _pair_ids(store)
    _click(store, "alice")
    assert _leases(store) == {pair_id: (None, None)}  # alice's lease, taken 0 s ago, is cleared
    before = time.time()
    job = store.next_pair("bob")  # the default 300 s lease would still hold the pair otherwise
    after = time.time()
    assert (job.pair_id, job.prompt) == (pair_id, _prompt(0))
    assert sorted((c.model, c.text) for c in (job.left, job.right)) == [
        ("run-a", "run-a answers 0"),
        ("run-b", "run-b answers 0"),
    ]
    ((leased_by, leased_at),) = _leases(store).values()
    assert leased_by == "bob" and leased_at is not None and before <= leased_at <= after  # leased to bob now


def test_raters_asking_at_once_never_share_a_leased_pair(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=8)
    got: dict[str, str | None] = {}
    barrier = threading.Barrier(8)

    def ask(rater: str) -> None:
        barrier.wait()
        job = store.next_pair(rater)
        got[rater] = job.pair_id if job else None

    threads = [threading.Thread(target=ask, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = list(got.values())
    assert None not in ids and len(set(ids)) == 8


def test_rate_refuses_bad_input(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=1)
    job = store.next_pair("alice")
    rate = store.rate
    with pytest.raises(TunelabError, match="unknown choice"):
        rate(job.pair_id, "alice", left_id=job.left.id, choice="a")
    for score in (0, 6, 2.5, True):
        with pytest.raises(TunelabError, match="score"):
            rate(job.pair_id, "alice", left_id=job.left.id, choice="tie", score=score)
    with pytest.raises(TunelabError, match="unknown pair"):
        rate("pair_nope", "alice", left_id=job.left.id, choice="tie")
    with pytest.raises(TunelabError, match="not in pair"):
        rate(job.pair_id, "alice", left_id="smp_other", choice="tie")
    with pytest.raises(TunelabError, match="name"):
        rate(job.pair_id, " ", left_id=job.left.id, choice="tie")
    row = rate(job.pair_id, "alice", left_id=job.left.id, choice="both_bad", score=2, comment="meh")
    assert (row["choice"], row["score"], row["comment"]) == ("both_bad", 2, "meh")
    with pytest.raises(TunelabError, match="already rated"):
        rate(job.pair_id, "alice", left_id=job.left.id, choice="tie")
    assert store.progress()["ratings"] == 1


def test_agreement_is_sklearns_kappa_on_doubly_rated_pairs(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=5)
    assert store.agreement() == {"doubly_rated": 0, "kappa": None}
    alice = ["a", "a", "b", "tie", "both_bad"]
    bob = ["a", "b", "b", "tie", "a"]
    for mine, theirs in zip(alice, bob, strict=True):
        pair = store.next_pair("alice")
        for rater, label in (("alice", mine), ("bob", theirs)):
            left_is_a = pair.left.model == "run-a"
            choice = {"a": "left" if left_is_a else "right", "b": "right" if left_is_a else "left"}
            store.rate(pair.pair_id, rater, left_id=pair.left.id, choice=choice.get(label, label))
    got = store.agreement()
    assert got["doubly_rated"] == 5
    assert got["kappa"] == pytest.approx(cohen_kappa_score(alice, bob))


def test_agreement_is_none_when_kappa_is_undefined(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=2)
    for _ in range(2):
        pair = store.next_pair("alice")
        for rater in ("alice", "bob"):
            store.rate(pair.pair_id, rater, left_id=pair.left.id, choice="tie")
    assert store.agreement() == {"doubly_rated": 2, "kappa": None}


def test_ratings_join_prompt_and_both_answers(tmp_path: Path) -> None:
    store = _store(tmp_path, prompts=1)
    _click(store, "alice", "b", score=4, comment="clearer")
    (row,) = store.ratings()
    assert row["prompt"] == _prompt(0)
    assert row["a"] == {"id": row["a"]["id"], "text": "run-a answers 0", "model": "run-a"}
    assert row["b"]["text"] == "run-b answers 0"
    assert (row["choice"], row["score"], row["comment"], row["rater"]) == ("b", 4, "clearer", "alice")
    assert isinstance(row["created_at"], float)
