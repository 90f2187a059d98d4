"""data.augment: EDA rows keep their label, are named augment:<method>:<row>, go to train only, and
pass the gates (duplicates of any row, near duplicates of held-out rows dropped); a paraphrasing
endpoint is driven over HTTP on loopback."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LABELED, make_recipe
from tests.http_stub import json_endpoint
from tunelab.config import load_recipe
from tunelab.config.safety import AugmentConfig
from tunelab.data.augment import eda
from tunelab.data.pipeline import load_records
from tunelab.errors import RecipeError


def test_each_eda_operation_keeps_the_words_it_should() -> None:
    text = "one two three four five six seven eight nine ten"
    words = text.split()
    swapped = eda(text, AugmentConfig(swap=0.2, delete=0, insert=0), random.Random(0)).split()
    assert sorted(swapped) == sorted(words) and swapped != words  # the same words, moved
    deleted = eda(text, AugmentConfig(swap=0, delete=0.3, insert=0), random.Random(0)).split()
    assert 0 < len(deleted) < len(words) and all(w in words for w in deleted)
    assert [w for w in words if w in deleted] == deleted  # order kept
    inserted = eda(text, AugmentConfig(swap=0, delete=0, insert=0.2), random.Random(0)).split()
    assert len(inserted) == len(words) + 2 and set(inserted) == set(words)  # 2 of the row's own words
    assert eda("alone", AugmentConfig(), random.Random(0)) == "alone"


def test_augmented_rows_join_train_only_and_pass_the_gates(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", data={"augment": {"method": "eda", "copies": 3}})
    records = load_records(load_recipe(recipe))
    step = records.report["augment"]
    new = [r for r in records.splits["train"] if r.source.startswith("augment:eda:")]
    assert step["generated"] == 3 * len(LABELED) and step["added"] == len(new)
    assert (
        step["added"] + step["duplicates_removed"] + step["leaked_removed"] + step["empty"]
        == step["generated"]
    )
    originals = {r.source: r for r in records.splits["train"] if not r.source.startswith("augment:")}
    for row in new:
        source = originals[row.source.removeprefix("augment:eda:")]
        assert row.label == source.label and set(row.text.split()) <= set(source.text.split())
    texts = [r.text.casefold() for r in records.splits["train"]]
    assert len(texts) == len(set(texts))  # no row twice
    assert not any(r.source.startswith("augment:") for r in records.splits["validation"])


def test_a_rewrite_that_copies_a_held_out_row_is_dropped(
    tmp_path: Path, tiny_bert: Path, paraphraser: Any
) -> None:
    endpoint, seen = paraphraser
    recipe = make_recipe(
        tmp_path, tiny_bert, "classify", data={"augment": {"method": "paraphrase", "endpoint": endpoint}}
    )
    records = load_records(load_recipe(recipe))
    step = records.report["augment"]
    # The stub answers "balance please" (a validation row) for balance rows, a fresh text otherwise.
    assert step["leaked_removed"] == 1 and step["duplicates_removed"] == 2  # 3 balance rows, one text
    assert {r.text for r in records.splits["train"] if r.source.startswith("augment:")} >= {
        "REWRITTEN: send fifty dollars to my savings"
    }
    assert seen[0]["messages"][0]["content"].endswith("what is my balance")
    assert seen[0]["model"] == "gpt-4o-mini"


@pytest.fixture
def paraphraser() -> Iterator[tuple[str, list[dict]]]:
    """/v1/chat/completions answering "balance please" (a validation row) for balance rows, else a
    quoted rewrite with a line of chatter after it."""

    def respond(path: str, body: dict) -> dict:
        text = body["messages"][0]["content"].split("\n\n")[-1]
        leak = "balance" in text or "how much" in text
        answer = "balance please" if leak else f'"REWRITTEN: {text}"\nHope it helps!'
        return {"choices": [{"message": {"role": "assistant", "content": answer}}]}

    with json_endpoint(respond) as served:
        yield served


def test_augment_settings_are_checked(tmp_path: Path, tiny_bert: Path, tiny_llama: Path) -> None:
    # Field errors first (pydantic checks fields before the cross-field rules run), then a cross-field one
    with pytest.raises(RecipeError, match=r"data\.augment\.delete"):
        load_recipe(make_recipe(tmp_path, tiny_bert, "classify", data={"augment": {"delete": 1}}))
    with pytest.raises(
        RecipeError, match=r"paraphrase needs one of data\.augment\.model or data\.augment\.endpoint"
    ):
        load_recipe(make_recipe(tmp_path, tiny_bert, "classify", data={"augment": {"method": "paraphrase"}}))
    with pytest.raises(RecipeError, match="applies to task: classify only"):
        load_recipe(make_recipe(tmp_path, tiny_llama, "sft", data={"augment": {}}))
