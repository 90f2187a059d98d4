"""feedback export: exact rows in every format, every rating accounted for, the data gates, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.errors import DataError, TunelabError
from tunelab.feedback.export import export_feedback, resolve
from tunelab.feedback.store import FeedbackStore, Sample

# (prompt, a, b, [(rater, verdict on a/b), ...])
CASES = [
    ("Where is my parcel?", "It left the depot this morning.", "No idea.", [("alice", "a")]),
    ("Block my card", "Done.", "Your card is now blocked; a new one is on its way.", [("alice", "b")]),
    ("Say hi", "Hi!", "Hello!", [("alice", "tie")]),
    ("Capital of France?", "Berlin.", "Madrid.", [("alice", "both_bad")]),
    ("Count to three", "1 2 3", "one two", [("alice", "a"), ("bob", "b")]),
    ("Name a colour", "Blue, like the sky.", "Car.", [("alice", "a"), ("bob", "a"), ("carol", "b")]),
]
CHOICE = {"a": "left", "b": "right", "tie": "tie", "both_bad": "both_bad"}


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rated_store(tmp_path: Path, cases: list = CASES) -> Path:
    db = tmp_path / "registry.sqlite"
    store = FeedbackStore(db)
    for prompt, a, b, verdicts in cases:
        first, second = (Sample(_messages(prompt), m, t, 0.8, 0.95, 32, 0) for m, t in (("x", a), ("y", b)))
        store.add_samples([first, second])
        (pair,) = store.add_pairs([(first.id, second.id)])
        for rater, verdict in verdicts:  # shown with a on the left, so left means a
            store.rate(pair, rater, left_id=first.id, choice=CHOICE[verdict])
    return db


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _export(db: Path, fmt: str, out: Path, **options) -> dict:
    return export_feedback(db, fmt, out, screen=options.pop("screen", "off"), **options)


def test_majority_decides_and_an_even_split_has_no_verdict() -> None:
    assert resolve(["a"]) == "a"
    assert resolve(["a", "a", "b"]) == "a"
    assert resolve(["a", "b"]) is None
    assert resolve(["tie", "both_bad", "tie"]) == "tie"


def test_trl_rows_and_every_rating_accounted_for(tmp_path: Path) -> None:
    report = _export(rated_store(tmp_path), "trl", tmp_path / "trl.jsonl")
    assert _rows(tmp_path / "trl.jsonl") == [
        {"prompt": _messages("Where is my parcel?"), "chosen": _answer("It left the depot this morning."),
         "rejected": _answer("No idea.")},
        {"prompt": _messages("Block my card"), "chosen": _answer("Your card is now blocked; a new one is on its way."),
         "rejected": _answer("Done.")},
        {"prompt": _messages("Name a colour"), "chosen": _answer("Blue, like the sky."), "rejected": _answer("Car.")},
    ]  # fmt: skip
    assert report["ratings_by_fate"] == {"both_bad": 1, "conflicting": 2, "overruled": 1, "tie": 1, "used": 4}
    assert sum(report["ratings_by_fate"].values()) == report["ratings"] == 9
    assert (report["pairs"], report["rows"]) == (3, 3)


def test_openai_rows(tmp_path: Path) -> None:
    _export(rated_store(tmp_path, CASES[:1]), "openai", tmp_path / "dpo.jsonl")
    assert _rows(tmp_path / "dpo.jsonl") == [
        {
            "input": {"messages": _messages("Where is my parcel?")},
            "preferred_output": _answer("It left the depot this morning."),
            "non_preferred_output": _answer("No idea."),
        }
    ]


def test_kto_keeps_both_bad_as_two_negatives_and_drops_ties(tmp_path: Path) -> None:
    report = _export(rated_store(tmp_path, CASES[:4]), "kto", tmp_path / "kto.jsonl")
    rows = _rows(tmp_path / "kto.jsonl")
    assert rows == [
        {"prompt": _messages("Where is my parcel?"), "completion": _answer("It left the depot this morning."), "label": True},
        {"prompt": _messages("Where is my parcel?"), "completion": _answer("No idea."), "label": False},
        {"prompt": _messages("Block my card"), "completion": _answer("Your card is now blocked; a new one is on its way."),
         "label": True},
        {"prompt": _messages("Block my card"), "completion": _answer("Done."), "label": False},
        {"prompt": _messages("Capital of France?"), "completion": _answer("Berlin."), "label": False},
        {"prompt": _messages("Capital of France?"), "completion": _answer("Madrid."), "label": False},
    ]  # fmt: skip
    assert report["ratings_by_fate"] == {"tie": 1, "used": 3}


def test_length_check_warns_when_the_chosen_answer_is_nearly_always_longer(tmp_path: Path) -> None:
    cases = [
        (f"question {i}", f"a long and careful answer number {i}", "no", [("alice", "a")]) for i in range(5)
    ]
    report = _export(rated_store(tmp_path, cases), "trl", tmp_path / "out.jsonl")
    assert report["length"]["chosen_longer_share"] == 1.0
    assert any("length balance" in w and "longer" in w for w in report["warnings"])
    two = _export(rated_store(tmp_path / "b", CASES[:2]), "trl", tmp_path / "b.jsonl")
    assert two["length"]["chosen_longer_share"] == 1.0  # 2 of 2 pairs: outside the band too
    mixed = [*CASES[:2], ("q", "short", "a much longer answer", [("alice", "a")])]  # 2 of 3 longer
    assert _export(rated_store(tmp_path / "m", mixed), "trl", tmp_path / "m.jsonl")["warnings"] == []


def test_leakage_against_held_out_prompts_drops_or_fails(tmp_path: Path) -> None:
    db = rated_store(tmp_path)
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": "Where is my parcel?"}, {"prompt": "unrelated"}])
    report = _export(db, "trl", tmp_path / "out.jsonl", held_out=held)
    assert report["dropped_pairs"]["leakage"] == 1
    assert [r["prompt"][0]["content"] for r in _rows(tmp_path / "out.jsonl")] == [
        "Block my card",
        "Name a colour",
    ]
    (tmp_path / "fail.jsonl").write_text("earlier export\n")
    with pytest.raises(DataError, match="overlap held-out"):
        _export(db, "trl", tmp_path / "fail.jsonl", held_out=held, leakage="fail")
    assert (tmp_path / "fail.jsonl").read_text() == "earlier export\n"


def test_exact_duplicate_pairs_are_exported_once(tmp_path: Path) -> None:
    report = _export(rated_store(tmp_path, CASES[:1] * 2), "trl", tmp_path / "out.jsonl")
    assert report["dropped_pairs"]["duplicate"] == 1 and report["rows"] == 1


def test_content_screen_reports_or_drops_flagged_pairs(tmp_path: Path) -> None:
    rude = "Fuck off, you stupid shit."
    prefers_rude = ("Help me", rude, "Sure, what do you need?", [("alice", "a")])
    reported = _export(
        rated_store(tmp_path, [*CASES[:2], prefers_rude]), "trl", tmp_path / "r.jsonl", screen="report"
    )
    assert reported["content_screen"]["flagged"] == 1 and reported["rows"] == 3
    assert any("only the chosen answer is flagged" in w for w in reported["warnings"])
    rejects_rude = ("Help me", rude, "Sure, what do you need?", [("alice", "b")])
    db = rated_store(tmp_path / "d", [*CASES[:2], rejects_rude])
    dropped = _export(db, "trl", tmp_path / "d.jsonl", screen="drop")
    assert dropped["dropped_pairs"]["content_screen"] == 1 and dropped["rows"] == 2


def test_a_failed_write_leaves_no_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = rated_store(tmp_path)
    out = tmp_path / "out" / "trl.jsonl"

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("tunelab.files.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        _export(db, "trl", out)
    assert list(out.parent.iterdir()) == []


def test_bad_options_and_nothing_to_export_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="bad export options") as bad:
        _export(tmp_path / "x.sqlite", "csv", tmp_path / "o.jsonl", leakage="maybe")
    assert len(bad.value.problems) == 2
    with pytest.raises(TunelabError, match="no such database"):
        _export(tmp_path / "missing.sqlite", "trl", tmp_path / "o.jsonl")
    db = rated_store(tmp_path, [CASES[2]])
    with pytest.raises(TunelabError, match="nothing to export") as empty:
        _export(db, "trl", tmp_path / "o.jsonl")
    assert empty.value.problems == ["tie: 1"]
    assert not (tmp_path / "o.jsonl").exists()


def test_a_pair_of_identical_answers_is_dropped_and_counted(tmp_path: Path) -> None:
    same = [("Say yes", "Yes.", "Yes. ", [("alice", "a")]), ("Say no", "No.", "Nope.", [("alice", "b")])]
    db = rated_store(tmp_path, same)
    for fmt in ("trl", "kto"):  # kto would call "Yes." both desirable and undesirable
        report = _export(db, fmt, tmp_path / f"{fmt}.jsonl")
        assert report["dropped_pairs"]["identical"] == 1 and report["pairs"] == 1
        texts = {json.dumps(row) for row in _rows(tmp_path / f"{fmt}.jsonl")}
        assert not any("Yes." in text for text in texts)
