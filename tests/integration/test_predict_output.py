"""`tunelab predict` for tabular users: the output's format follows --out's suffix (CSV, TSV, JSON lines,
a JSON array), each output row carries its input row's columns (all, or those --keep names), and the
prediction columns sit beside them under names that start with `pred_`, so they never overwrite one.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe, write_jsonl
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.errors import DataError, TunelabError
from tunelab.inference import predict_file
from tunelab.models.restore import load_trained
from tunelab.runner import train

runner = CliRunner()
LABELS = ["balance", "card", "transfer"]
PROBABILITY_COLUMNS = [f"pred_probabilities.{name}" for name in LABELS]
# Texts a naive writer would break: a comma, a quote, a newline, a tab, a leading space, non-ASCII.
ROWS = [
    {"id": "r-10", "text": "block my card, please", "label": "card"},
    {"id": "r-2", "text": 'line one\nline two, "quoted"\tand a tab', "label": ""},
    {"id": "r-33", "text": " what is my balance? 100 €", "label": "balance"},
]


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("predict-output")
    recipe = make_recipe(root, tiny_bert, "classify", train={"max_steps": 3, "eval_every": 3})
    return train(load_recipe(recipe)).run_dir


def _write_csv(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_a_csv_in_gives_a_csv_out_with_the_input_columns_beside_the_predictions(
    classify_run: Path, tmp_path: Path
) -> None:
    data = _write_csv(tmp_path / "tickets.csv", ROWS)
    out = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(classify_run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 prediction(s) written" in result.output

    header, got = _read_csv(out)
    assert header == ["id", "text", "label", "pred_label", *PROBABILITY_COLUMNS]
    # Every input cell comes back as it was (commas, quotes, newlines, tabs), in the input's row order.
    assert [{name: row[name] for name in ("id", "text", "label")} for row in got] == ROWS
    # The numbers are the model's, written so that they read back exactly: the same as JSON lines give.
    predict_file(load_trained(classify_run), data, tmp_path / "preds.jsonl")
    as_json = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    for row, same in zip(got, as_json, strict=True):
        probabilities = {name: float(row[f"pred_probabilities.{name}"]) for name in LABELS}
        assert probabilities == same["pred_probabilities"]
        assert row["pred_label"] == same["pred_label"] == max(probabilities, key=probabilities.__getitem__)
        carried = {name: value for name, value in same.items() if not name.startswith("pred_")}
        assert carried == {name: value for name, value in row.items() if not name.startswith("pred_")}


def test_keep_chooses_the_columns_and_every_format_holds_the_same_rows(
    classify_run: Path, tmp_path: Path
) -> None:
    data = _write_csv(tmp_path / "tickets.tsv", ROWS, delimiter="\t")
    trained = load_trained(classify_run)
    for suffix in (".tsv", ".jsonl", ".json"):
        assert predict_file(trained, data, tmp_path / f"preds{suffix}", keep=["id"]) == 3

    header, tsv = _read_csv(tmp_path / "preds.tsv", delimiter="\t")
    assert header == ["id", "pred_label", *PROBABILITY_COLUMNS]
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "preds.json").read_text()) == lines  # one JSON array, the same rows
    assert [list(row) for row in lines] == [["id", "pred_label", "pred_probabilities"]] * 3
    assert [row["id"] for row in lines] == [row["id"] for row in tsv] == ["r-10", "r-2", "r-33"]
    assert [row["pred_label"] for row in lines] == [row["pred_label"] for row in tsv]


def test_keep_refuses_a_column_the_file_lacks_naming_each_row(classify_run: Path, tmp_path: Path) -> None:
    trained = load_trained(classify_run)
    data = write_jsonl(tmp_path / "rows.jsonl", [{"id": 1, "text": "hi"}, {"text": "no id"}, {"text": "x"}])
    out = tmp_path / "preds.csv"
    with pytest.raises(DataError) as unknown:
        predict_file(trained, data, out, keep=["id", "ID", "txt"])
    assert str(unknown.value) == (
        f"--keep names 'ID', 'txt' but {data} has no such column\nfix: keep some of its columns: id, text"
    )
    with pytest.raises(DataError) as lacking:
        predict_file(trained, data, out, keep=["text", "id"])
    assert str(lacking.value) == (
        f"{data}: 2 row(s) lack a column that --keep names; nothing was predicted\n"
        f"  {data}:2: no 'id' column to keep\n"
        f"  {data}:3: no 'id' column to keep\n"
        "fix: --keep only columns every row has, or add them to those rows"
    )
    assert not out.exists()

    result = runner.invoke(
        app, ["predict", str(classify_run), "--data", str(data), "--out", str(out), "--keep", "id,,"]
    )
    assert result.exit_code == 1 and "--keep 'id,,': an empty column name" in result.output


def test_an_input_column_is_never_overwritten_by_a_prediction(classify_run: Path, tmp_path: Path) -> None:
    # Last week's predictions fed to this model: their pred_ columns would pass for this run's, so refused.
    rows = [{"id": "a", "text": "lost my card", "pred_label": "card"}]
    data = _write_csv(tmp_path / "last_week.csv", rows)
    out = tmp_path / "preds.csv"
    with pytest.raises(TunelabError) as clash:
        predict_file(load_trained(classify_run), data, out)
    assert str(clash.value) == (
        f"{data}: the column(s) pred_label would be mistaken for this run's predictions, whose columns start "
        "with pred_\n"
        "fix: --keep the columns to carry (e.g. --keep id,text), or rename those columns"
    )
    assert not out.exists()
    assert predict_file(load_trained(classify_run), data, out, keep=["id", "text"]) == 1
    assert _read_csv(out)[0] == ["id", "text", "pred_label", *PROBABILITY_COLUMNS]


def test_an_output_suffix_without_a_format_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": "hi"}])
    out = tmp_path / "preds.txt"
    # No model at that path: the suffix is checked first, so its error is the one shown.
    result = runner.invoke(app, ["predict", str(tmp_path / "no-run"), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 1
    assert f"{out}: predictions cannot be written as '.txt'" in result.output
    assert "fix: name the output .csv, .tsv, .jsonl or .json" in result.output
    assert not out.exists()


def test_predictions_never_replace_the_rows_they_came_from(classify_run: Path, tmp_path: Path) -> None:
    data = _write_csv(tmp_path / "rows.csv", [{"id": "a", "text": "lost my card"}])
    before = data.read_bytes()
    with pytest.raises(TunelabError) as refused:
        predict_file(load_trained(classify_run), data, tmp_path / "." / "rows.csv", keep=["id"])
    assert "is the --data file: writing the predictions would replace the rows they came from" in str(
        refused.value
    )
    assert data.read_bytes() == before
