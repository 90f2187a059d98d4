"""docs/recipe.md is generated from the recipe schema (config/reference.py) and must match it: a field
added, renamed or re-described without regenerating the page fails here."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import REPO
from tunelab.cli import app
from tunelab.config.reference import REGENERATE, recipe_reference

PAGE = REPO / "docs" / "recipe.md"


def test_the_checked_in_reference_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == recipe_reference(), (
        f"docs/recipe.md is out of date with the recipe schema; regenerate it from the repository root: "
        f"{REGENERATE}"
    )


def test_every_field_has_a_row_with_its_type_default_and_description() -> None:
    text = recipe_reference()
    rows = {
        line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| `")
    }
    assert rows["`train.lr`"] == "| `train.lr` | float (> 0) | `0.0002` | Peak learning rate of AdamW. |"
    assert rows["`name`"].split(" | ")[2] == "required"
    assert rows["`data.near_dedup`"].split(" | ")[1:3] == ["section", "its defaults"]
    assert rows["`data.train[].weight`"].split(" | ")[1:3] == ["float (> 0)", "`1.0`"]
    assert rows["`eval.canaries.repetitions`"].split(" | ")[1:3] == [
        "list of int (at least 1 item)",
        "`[1, 4, 16]`",
    ]
    assert rows["`output.trackers`"].split(" | ")[2] == "`[tensorboard]`"
    # A placeholder is escaped, or Markdown would hide it as an HTML tag.
    assert "(runs/&lt;name>-&lt;timestamp>/)" in rows["`output.dir`"]


def test_each_registered_method_gets_its_own_table() -> None:
    text = recipe_reference()
    assert "## `method` with `name: lora`" in text and "## `method` with `name: adapter`" in text
    lora = text.split("## `method` with `name: lora`")[1].split("\n## ")[0]
    assert "| `method.r` | int (> 0) | `8` | Rank of the LoRA update matrices. |" in lora
    assert "num_virtual_tokens" not in lora


def test_the_output_is_the_same_on_every_machine() -> None:
    text = recipe_reference()
    assert text == recipe_reference()
    assert str(REPO) not in text and str(Path.home()) not in text


def test_the_command_prints_it_and_writes_it(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(app, ["recipe-reference"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == recipe_reference()
    target = tmp_path / "recipe.md"
    written = runner.invoke(app, ["recipe-reference", "--out", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_bytes() == recipe_reference().encode("utf-8")
