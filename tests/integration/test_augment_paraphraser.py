"""data.augment's paraphrase with a local model: the data stage rewrites with the paraphraser its caller
passes (built above it by tunelab.paraphrase) and never loads a model itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import LABELED, make_recipe
from tunelab.config import Recipe, load_recipe
from tunelab.data.pipeline import load_records
from tunelab.errors import DataError
from tunelab.paraphrase import paraphraser_for


def local_recipe(tmp_path: Path, tiny_bert: Path, tiny_llama: Path, **augment: object) -> Recipe:
    section = {"method": "paraphrase", "model": str(tiny_llama), "copies": 2, **augment}
    return load_recipe(make_recipe(tmp_path, tiny_bert, "classify", data={"augment": section}))


def test_the_data_stage_rewrites_with_the_paraphraser_it_is_given(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path
) -> None:
    asked: list[list[str]] = []

    def paraphraser(prompts: list[str]) -> list[str]:
        asked.append(prompts)
        return [f'"NEW {p.split(chr(10) * 2)[-1]}"\nHope it helps!' for p in prompts]

    records = load_records(local_recipe(tmp_path, tiny_bert, tiny_llama), paraphraser=paraphraser)
    (prompts,) = asked  # one call, every prompt in it
    assert len(prompts) == 2 * len(LABELED)
    assert prompts[0] == (
        "Rewrite this sentence in other words. Keep its meaning and its tone. Answer with the sentence only."
        "\n\nwhat is my balance"
    )
    new = {r.text: r for r in records.splits["train"] if r.source.startswith("augment:paraphrase:")}
    # The first line of each answer, unquoted; the two copies of a row are one text, so one is a duplicate.
    assert set(new) == {f"NEW {row['text']}" for row in LABELED}
    assert new["NEW I lost my card"].label == "card"
    assert records.report["augment"]["generated"] == 16
    assert records.report["augment"]["duplicates_removed"] == 8


def test_without_a_paraphraser_a_local_model_is_refused(
    tmp_path: Path, tiny_bert: Path, tiny_llama: Path
) -> None:
    with pytest.raises(DataError) as raised:
        load_records(local_recipe(tmp_path, tiny_bert, tiny_llama))
    assert raised.value.message == (
        "data.augment.model: paraphrasing with a local model needs a paraphraser from the caller of the data "
        "stage (load_records(..., paraphraser=...))"
    )
    assert raised.value.fix == "build one with tunelab.paraphrase.paraphraser_for(recipe)"


def test_the_local_paraphraser_runs_the_model_reproducibly(
    tmp_path: Path, tiny_bert: Path, chat_llama: Path
) -> None:
    # An instruct model: the rewrite is asked through its chat template.
    recipe = local_recipe(tmp_path, tiny_bert, chat_llama, max_new_tokens=4)
    paraphraser = paraphraser_for(recipe)
    assert paraphraser is not None
    prompts = ["Rewrite: block my card please", "Rewrite: what is my balance"]
    first = paraphraser(prompts)
    assert len(first) == 2 and all(isinstance(answer, str) for answer in first)
    assert paraphraser(prompts) == first  # sampled with the recipe's seed


def test_no_paraphraser_is_built_where_no_local_model_is_asked_for(tmp_path: Path, tiny_bert: Path) -> None:
    def recipe(augment: dict[str, object] | None) -> Recipe:
        data = {"augment": augment} if augment is not None else {}
        return load_recipe(make_recipe(tmp_path, tiny_bert, "classify", data=data))

    assert paraphraser_for(recipe(None)) is None
    assert paraphraser_for(recipe({"method": "eda"})) is None
    assert paraphraser_for(recipe({"method": "paraphrase", "endpoint": "http://127.0.0.1:9/v1"})) is None


def test_validate_and_data_prepare_pass_the_local_paraphraser(
    tmp_path: Path, tiny_bert: Path, chat_llama: Path
) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    section = {"method": "paraphrase", "model": str(chat_llama), "max_new_tokens": 4}
    recipe = make_recipe(tmp_path, tiny_bert, "classify", data={"augment": section})
    checked = CliRunner().invoke(app, ["validate", str(recipe)])
    assert checked.exit_code == 0, checked.output
    out = tmp_path / "prepared"
    prepared = CliRunner().invoke(app, ["data", "prepare", str(recipe), "--out", str(out)])
    assert prepared.exit_code == 0, prepared.output
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["augment"]["generated"] == len(LABELED)
