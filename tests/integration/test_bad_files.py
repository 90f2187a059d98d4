"""A corpus of bad and odd data files, generated here: each one ends in a clean, named error or a
successful read, never a traceback or "a bug in tunelab", and no row is lost without being counted."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe
from tunelab.cli import app
from tunelab.data.formats import load_split
from tunelab.errors import TunelabError

GOOD = [{"text": f"row number {i} says something", "label": "a" if i % 2 else "b"} for i in range(12)]


def jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")


def corpus() -> dict[str, bytes]:
    rng = random.Random(0)
    good = jsonl(GOOD)
    lines = good.splitlines(keepends=True)
    files = {
        "truncated_last_line.jsonl": good[:-15],
        "truncated_middle.jsonl": b"".join(lines[:5]) + lines[5][:10] + b"\n" + b"".join(lines[6:]),
        "crlf.jsonl": good.replace(b"\n", b"\r\n"),
        "bom_utf8.jsonl": b"\xef\xbb\xbf" + good,
        "utf16.jsonl": good.decode().encode("utf-16"),
        "utf16_no_bom.jsonl": good.decode().encode("utf-16-le"),
        "mixed_encodings.jsonl": b"".join(lines[:6])
        + '{"text": "caf\xe9", "label": "a"}\n'.encode("latin-1"),
        "very_long_line.jsonl": jsonl([{"text": "word " * 200_000, "label": "a"}, *GOOD]),
        "nul_bytes.jsonl": good.replace(b"row number 3", b"row\x00number 3"),
        "array_not_jsonl.jsonl": json.dumps(GOOD).encode(),
        "deeply_nested.jsonl": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": "a"}\n' + good,
        "numbers_for_text.jsonl": jsonl([{"text": 12345, "label": "a"}, *GOOD]),
        "null_labels.jsonl": jsonl([{"text": "no label", "label": None}, *GOOD]),
        "duplicate_keys.jsonl": b'{"text": "one", "text": "two", "label": "a"}\n' + good,
        "not_objects.jsonl": jsonl([1, "two", [3], *GOOD]),
        "empty.jsonl": b"",
        "only_blank_lines.jsonl": b"\n\n \n",
        "binary_noise.jsonl": bytes(rng.randrange(256) for _ in range(2_000)),
        "csv_unclosed_quote.csv": b'text,label\n"never closed,a\nrow two,b\n',
        "csv_extra_cells.csv": b"text,label\nhello,a,extra\nfine,b\n",
        "csv_header_only.csv": b"text,label\n",
        "csv_nul.csv": b"text,label\nhe\x00llo,a\nfine,b\n",
        "csv_long_cell.csv": b"text,label\n" + b"x" * 300_000 + b",a\nfine,b\n",
        "csv_latin1.csv": "text,label\ncaf\xe9,a\n".encode("latin-1"),
        "json_array_nested_wrapper.json": json.dumps({"data": GOOD}).encode(),
        "json_truncated.json": json.dumps(GOOD).encode()[:-20],
    }
    return files


CORPUS = corpus()
BANNED = ("Traceback", "bug in tunelab")


def data_lines(raw: bytes) -> int | None:
    """Rows a line-based UTF-8 JSONL file holds: its non-blank lines (None where that is not defined)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return sum(1 for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_bad_file_is_read_or_refused_cleanly_and_every_row_is_counted(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(CORPUS[name])
    try:
        loaded = load_split(path, kind="labeled", on_error="skip")
    except TunelabError as exc:  # a named error: it says which file (and, for a row, which line)
        assert str(path) in str(exc) and not any(b in str(exc) for b in BANNED)
        return
    # Read: every row either became a record or is counted as bad, with its line.
    assert len(loaded.records) + len(loaded.bad_rows) == loaded.total_rows
    assert all(entry.startswith(f"{path}:") for entry in loaded.bad_rows)
    if path.suffix == ".jsonl" and (lines := data_lines(CORPUS[name])) is not None:
        assert loaded.total_rows == lines  # no line of the file went unaccounted for
    if name == "duplicate_keys.jsonl":  # json would keep "two" and drop "one" without a word
        assert any("the key 'text' appears twice in one object" in entry for entry in loaded.bad_rows)


@pytest.mark.parametrize("name", list(CORPUS))
def test_the_commands_say_what_is_wrong_with_a_bad_file(name: str, tmp_path: Path, tiny_bert: Path) -> None:
    path = tmp_path / name
    path.write_bytes(CORPUS[name])
    inspect = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert inspect.exit_code in (0, 1), inspect.output
    assert not any(b in inspect.output for b in BANNED), inspect.output
    recipe = make_recipe(tmp_path, tiny_bert, "classify", data={"on_error": "skip"})
    validate = CliRunner().invoke(app, ["validate", str(recipe), "--set", f"data.train={path}"])
    assert validate.exit_code in (0, 1), validate.output
    assert not any(b in validate.output for b in BANNED), validate.output
