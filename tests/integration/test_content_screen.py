"""data.content_screen: flagged rows named by file:line with their score and turn; drop and fail act on
train only; a preference set that prefers flagged answers is refused; the scorers are pluggable."""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHATS, VAL_CHATS, make_recipe, write_jsonl
from tests.http_stub import json_endpoint
from tunelab.config import load_recipe
from tunelab.data.pipeline import load_records
from tunelab.errors import DataError

# Rows the offline scorer must flag: obvious insults and swearing, kept short.
OFFENSIVE = [
    {"messages": [{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "Shut the fuck up, you idiot."}]},
    {"messages": [{"role": "user", "content": "You stupid piece of shit bot"}, {"role": "assistant", "content": "I can help with your order."}]},
]  # fmt: skip


def screened_recipe(tmp_path: Path, model: Path, screen: dict[str, Any], train_rows: list[dict]) -> Any:
    # Threshold 0.9: the word-level scorer gives the clean "lazy dog" 0.87 (a dog, as an insult)
    screen = {"threshold": 0.9, **screen}
    recipe = make_recipe(tmp_path, model, "sft", data={"content_screen": screen})
    write_jsonl(tmp_path / "train.jsonl", train_rows)
    return load_recipe(recipe)


def mixed_rows() -> list[dict]:
    """The clean chats with the offensive ones at lines 3 and 7."""
    rows = list(CHATS)
    rows.insert(2, OFFENSIVE[0])
    rows.insert(6, OFFENSIVE[1])
    return rows


def test_flagged_rows_are_named_by_line_score_and_turn(tmp_path: Path, tiny_llama: Path) -> None:
    records = load_records(screened_recipe(tmp_path, tiny_llama, {"action": "report"}, mixed_rows()))
    train = records.report["content_screen"]["train"]
    assert train["flagged"] == 2 and train["dropped"] == 0 and train["rows"] == 10
    assert [(Path(r["source"]).name, r["where"]) for r in train["flagged_rows"]] == [
        ("train.jsonl:3", "turn 2 (assistant)"),
        ("train.jsonl:7", "turn 1 (user)"),
    ]
    assert all(r["score"] >= 0.9 for r in train["flagged_rows"])
    assert len(records.splits["train"]) == 10  # report only: nothing left out
    assert records.report["content_screen"]["validation"]["flagged"] == 0
    # 20% flagged is over the default max_flagged_share of 1%: said, not silently passed
    assert any("2 of 10 train rows" in w for w in records.report["warnings"])


def test_drop_leaves_the_flagged_train_rows_out_and_counts_them(tmp_path: Path, tiny_llama: Path) -> None:
    records = load_records(screened_recipe(tmp_path, tiny_llama, {"action": "drop"}, mixed_rows()))
    assert records.report["content_screen"]["train"]["dropped"] == 2
    assert len(records.splits["train"]) == len(CHATS)
    texts = {m.content for r in records.splits["train"] for m in r.messages}
    assert "Shut the fuck up, you idiot." not in texts


def test_fail_stops_over_the_share_and_names_the_rows(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = screened_recipe(tmp_path, tiny_llama, {"action": "fail", "max_flagged_share": 0.1}, mixed_rows())
    with pytest.raises(DataError) as caught:
        load_records(recipe)
    assert "2 of 10 train rows (20.0%)" in caught.value.message
    assert [Path(p.split(": ")[0]).name for p in caught.value.problems] == ["train.jsonl:3", "train.jsonl:7"]
    # Under the share, fail lets the run go on (and the rows are still listed).
    recipe = screened_recipe(
        tmp_path, tiny_llama, {"action": "fail", "max_flagged_share": 0.25}, mixed_rows()
    )
    assert load_records(recipe).report["content_screen"]["train"]["flagged"] == 2


def preference_rows(toxic_chosen: int, toxic_rejected: int) -> list[dict]:
    rows = []
    for i in range(6):
        chosen, rejected = f"Your order {i} ships today.", f"Your order {i} is late."
        if i < toxic_chosen:
            chosen = "Shut the fuck up, you idiot."
        elif i < toxic_chosen + toxic_rejected:
            rejected = "Shut the fuck up, you idiot."
        rows.append({"prompt": f"Where is order {i}?", "chosen": chosen, "rejected": rejected})
    return rows


def test_a_preference_set_that_prefers_flagged_answers_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    def recipe(action: str, chosen: int, rejected: int) -> Any:
        screen = {"action": action, "threshold": 0.9}
        path = make_recipe(tmp_path, tiny_llama, "preference", data={"content_screen": screen})
        write_jsonl(tmp_path / "train.jsonl", preference_rows(chosen, rejected))
        write_jsonl(tmp_path / "val.jsonl", preference_rows(0, 0)[:2])
        return load_recipe(path)

    with pytest.raises(DataError, match="in 2 pairs only the chosen answer is flagged, against 1"):
        load_records(recipe("drop", 2, 1))
    pairs = load_records(recipe("report", 2, 1)).report["content_screen"]["train"]["pairs"]
    assert pairs["chosen_flagged_rate"] == pytest.approx(2 / 6) and pairs["only_rejected_flagged"] == 1
    # Flagged rejected answers are what a preference set should look like: no complaint.
    report = load_records(recipe("report", 0, 3)).report
    assert report["content_screen"]["train"]["pairs"]["rejected_flagged_rate"] == 0.5
    assert not any("teaches toward" in w for w in report.get("warnings", []))


def test_a_kto_set_whose_desirable_answers_are_flagged_more_is_refused(
    tmp_path: Path, tiny_llama: Path
) -> None:
    def recipe(toxic_desirable: int, toxic_undesirable: int) -> Any:
        path = make_recipe(
            tmp_path,
            tiny_llama,
            "preference",
            data={"content_screen": {"action": "drop", "threshold": 0.9}},
            preference={"objective": "kto"},
        )
        rows = [
            {"prompt": f"Where is order {i}?", "completion": f"Order {i} ships today.", "label": i % 2 == 0}
            for i in range(8)
        ]
        for i in [0, 2, 4, 6][:toxic_desirable] + [1, 3, 5, 7][:toxic_undesirable]:
            rows[i]["completion"] = "Shut the fuck up, you idiot."
        write_jsonl(tmp_path / "train.jsonl", rows)
        write_jsonl(tmp_path / "val.jsonl", [{"prompt": "Hi?", "completion": "Hello.", "label": True}])
        return load_recipe(path)

    with pytest.raises(
        DataError, match=r"50\.0% of desirable completions are flagged, against 25\.0% of undesirable"
    ):
        load_records(recipe(2, 1))
    # Flagged undesirable answers are what a KTO set should look like: dropped under `drop`, no complaint.
    report = load_records(recipe(0, 2)).report["content_screen"]["train"]
    assert report["rated"] == {"desirable_flagged_rate": 0.0, "undesirable_flagged_rate": 0.5}
    assert report["dropped"] == 2 and report["flagged_rows"][0]["where"] == "completion"


@pytest.fixture
def moderation_server() -> Iterator[tuple[str, list[dict]]]:
    """An OpenAI-style /v1/moderations on 127.0.0.1: flags texts holding 'refund' (a stand-in rule)."""

    def respond(path: str, body: dict) -> dict:
        scores = [{"harassment": 0.9 if "refund" in t else 0.01, "violence": 0.02} for t in body["input"]]
        return {"results": [{"category_scores": s} for s in scores]}

    with json_endpoint(respond) as served:
        yield served


def test_an_openai_compatible_moderation_endpoint_scores_rows(
    tmp_path: Path,
    tiny_llama: Path,
    moderation_server: tuple[str, list[dict]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, seen = moderation_server
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    rows = [
        *CHATS,
        {
            "messages": [
                {"role": "user", "content": "I want a refund"},
                {"role": "assistant", "content": "Sure."},
            ]
        },
    ]
    screen = {"scorer": "openai", "endpoint": endpoint}
    records = load_records(screened_recipe(tmp_path, tiny_llama, screen, rows))
    (flagged,) = records.report["content_screen"]["train"]["flagged_rows"]
    assert Path(flagged["source"]).name == "train.jsonl:9" and flagged["score"] == 0.9
    assert seen[0]["_path"] == "/v1/moderations" and seen[0]["_auth"] == "Bearer sk-test"
    assert seen[0]["model"] == "omni-moderation-latest"


def test_a_missing_scorer_package_and_a_dead_endpoint_are_clear_errors(
    tmp_path: Path, tiny_llama: Path
) -> None:
    if importlib.util.find_spec("detoxify") is not None:
        pytest.skip("detoxify is installed here; this test is of its absence (it is not a dependency)")
    with pytest.raises(DataError, match="detoxify needs the detoxify package"):
        load_records(screened_recipe(tmp_path, tiny_llama, {"scorer": "detoxify"}, list(CHATS)))
    dead = {"scorer": "openai", "endpoint": "http://127.0.0.1:9/v1"}
    with pytest.raises(DataError, match=re.escape("the moderation endpoint http://127.0.0.1:9/v1 failed")):
        load_records(screened_recipe(tmp_path, tiny_llama, dead, list(CHATS)))


def test_screen_settings_are_validated(tmp_path: Path, tiny_llama: Path) -> None:
    from tunelab.errors import RecipeError

    recipe = make_recipe(
        tmp_path, tiny_llama, "sft", data={"content_screen": {"threshold": 2, "action": "warn"}}
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    assert "data.content_screen.threshold" in str(caught.value) and "data.content_screen.action" in str(
        caught.value
    )


def test_val_rows_are_screened_too(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = screened_recipe(tmp_path, tiny_llama, {"action": "drop"}, list(CHATS))
    write_jsonl(tmp_path / "val.jsonl", [*VAL_CHATS, OFFENSIVE[0]])
    records = load_records(recipe)
    assert records.report["content_screen"]["validation"]["flagged"] == 1
    assert (
        len(records.splits["validation"]) == len(VAL_CHATS) + 1
    )  # held-out rows are reported, never dropped


def test_the_run_report_lists_the_flagged_rows(tmp_path: Path, tiny_llama: Path) -> None:
    from tunelab.runner import train

    recipe = screened_recipe(tmp_path, tiny_llama, {"action": "drop"}, mixed_rows())
    result = train(recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": 1})}))
    report = (result.run_dir / "report.html").read_text()
    assert "content screen" in report and "train.jsonl:3" in report and "turn 2 (assistant)" in report
    assert (
        json.loads((result.run_dir / "data" / "report.json").read_text())["content_screen"]["train"][
            "dropped"
        ]
        == 2
    )
