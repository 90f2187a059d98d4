"""`data inspect` and the leakage check on real public data from ../shared/data (skipped where absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA
from tunelab.cli import app
from tunelab.data.fields import Columns
from tunelab.data.formats import load_split
from tunelab.data.quality import leakage
from tunelab.errors import DataError

pytestmark = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real test data not found at {SHARED_DATA} (it sits beside the checkout in CI)",
)
runner = CliRunner()

# file, extra CLI options, expected format, records, bad rows
CASES = [
    ("codealpaca/code_alpaca_2k.jsonl", [], "alpaca", 2015, 2),  # two rows have an empty output
    ("alpaca/alpaca_data_first335.jsonl", [], "alpaca", 334, 1),
    ("sst2/train.tsv", ["--text-column", "sentence"], "labeled", 67349, 0),
    ("hh_rlhf/harmless_base_test.jsonl", [], "preference", 2303, 9),  # 9 pairs with an empty answer
    (
        "dialogsum/test.jsonl",
        ["--format", "prompt_completion", "--column", "prompt=dialogue", "--column", "completion=summary1"],
        "prompt_completion",
        500,
        0,
    ),
    ("plain_text/tinyshakespeare.txt", [], "text", 32777, 0),  # non-blank lines
    ("mmlu/dev.jsonl", [], "multiple_choice", 285, 0),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "fmt", "records", "bad"), CASES, ids=[c[0] for c in CASES])
def test_data_inspect_runs_over_real_files(
    tmp_path: Path, tiny_llama: Path, name: str, options: list[str], fmt: str, records: int, bad: int
) -> None:
    out = tmp_path / "summary.json"
    args = ["data", "inspect", str(SHARED_DATA / name), "--json", str(out), *options]
    if "sst2" not in name:  # token statistics with a real tokenizer folder (SST-2 is large; chars suffice)
        args += ["--tokenizer", str(tiny_llama), "--max-seq-len", "256"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert (summary["format"], summary["records"], summary["bad_rows"]) == (fmt, records, bad)
    assert summary["characters"]["max"] >= summary["characters"]["p95"] >= summary["characters"]["median"] > 0
    if "tokens" in summary:
        assert summary["tokens"]["max"] >= summary["tokens"]["median"] > 0
    if fmt == "multiple_choice":
        assert set(summary["labels"]["counts"]) == {"A", "B", "C", "D"}
    if fmt == "labeled":
        assert summary["labels"]["counts"] == {"0": 29780, "1": 37569}


def test_an_unknown_layout_is_still_summarised(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    result = runner.invoke(
        app, ["data", "inspect", str(SHARED_DATA / "dialogsum/test.jsonl"), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["format"].startswith("unknown (dialogue, fname, summary1")
    assert summary["records"] == 500


@pytest.mark.slow
def test_sst2_train_and_dev_share_no_sentence() -> None:
    train = load_split(SHARED_DATA / "sst2/train.tsv", columns=Columns(text="sentence")).records
    dev = load_split(SHARED_DATA / "sst2/dev.tsv", columns=Columns(text="sentence")).records
    kept, step = leakage(train, {"validation": dev}, near=None, policy="drop")
    assert step["overlap"]["validation"]["exact"] == 0
    assert len(kept) == len(train) == 67349


CODEALPACA = SHARED_DATA / "codealpaca" / "code_alpaca_2k.jsonl"


@pytest.mark.skipif(not CODEALPACA.is_file(), reason="../shared/data/codealpaca is not here (see SOURCES.md)")
def test_codealpaca_answers_reach_training_byte_identical() -> None:
    """Normalisation (on by default) must not change what the model learns to produce: indented code
    comes through exactly, apart from the documented lossless steps (line breaks, controls, NFC)."""
    import unicodedata

    from tunelab.config import Recipe
    from tunelab.data.pipeline import load_records

    recipe = Recipe.model_validate({
        "name": "codealpaca", "task": "sft", "model": {"name": "unused/model"}, "method": {"name": "lora"},
        "data": {"train": str(CODEALPACA), "on_error": "skip"},  # two rows have an empty output
    })  # fmt: skip
    records = load_records(recipe)
    raw = [json.loads(line) for line in CODEALPACA.read_text(encoding="utf-8").splitlines()]

    def lossless(text: str) -> str:
        return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))

    kept = [r for split in records.splits.values() for r in split]
    assert len(kept) + records.report["splits"]["train"]["bad_rows"] == len(raw)  # nothing lost uncounted
    indented = 0
    for record in kept:
        line = int(record.source.rsplit(":", 1)[1])
        answer = record.messages[-1].content
        assert answer == lossless(raw[line - 1]["output"]), record.source
        indented += "\n  " in answer
    assert indented > 100  # the rows that squeezing used to damage are among them


def test_a_conll_file_is_named_as_such_not_suggested_as_plain_text(tmp_path: Path) -> None:
    path = SHARED_DATA / "conll2003" / "dev.txt"
    out = tmp_path / "summary.json"
    result = runner.invoke(app, ["data", "inspect", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        json.loads(out.read_text())["format"] == "CoNLL-like (one token and its tag per line), not plain text"
    )
    with pytest.raises(DataError) as refused:
        load_split(path)
    assert "looks like CoNLL token-tag data (one token and its tag per line" in refused.value.message
    assert refused.value.fix == (
        "set task: token_classify to train a tagger on it, or data.format: text to read each line as "
        "plain text anyway"
    )
    assert load_split(path, fmt="text").format == "text"  # asked for by name, it is read as asked
