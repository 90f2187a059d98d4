"""Reading files in the encodings people save them in: a named error for the rest, and for empties."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.data.readers import read_file
from tunelab.errors import DataError

JSONL = '{"text": "café crème", "label": "food"}\n{"text": "naïve", "label": "word"}\n'
CSV = "text,label\ncafé crème,food\nnaïve,word\n"
EXPECTED = [{"text": "café crème", "label": "food"}, {"text": "naïve", "label": "word"}]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize(("name", "content"), [("data.jsonl", JSONL), ("data.csv", CSV)])
def test_utf8_and_files_with_a_byte_order_mark_read_alike(
    tmp_path: Path, encoding: str, name: str, content: str
) -> None:
    raw = content.encode(encoding)
    if encoding == "utf-16-be":
        raw = b"\xfe\xff" + raw  # the codec writes no BOM; Windows tools do
    path = tmp_path / name
    path.write_bytes(raw)
    assert [row.fields for row in read_file(path).rows] == EXPECTED
    gz = tmp_path / f"{name}.gz"
    gz.write_bytes(gzip.compress(raw))
    assert [row.fields for row in read_file(gz).rows] == EXPECTED


def test_another_encoding_is_named_with_its_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\nok,a\ncafé,b\n".encode("latin-1"))
    with pytest.raises(DataError) as caught:
        read_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: not UTF-8 (byte 0xe9)")
    assert "Latin-1 or Windows-1252" in message
    assert "iconv -f WINDOWS-1252 -t UTF-8 latin.csv > latin.utf8.csv" in message


def test_utf16_without_a_byte_order_mark_is_recognised_as_such(tmp_path: Path) -> None:
    path = tmp_path / "nobom.jsonl"
    path.write_bytes(JSONL.encode("utf-16-le"))
    with pytest.raises(DataError, match="UTF-16 without a byte-order mark"):
        read_file(path)


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("empty.jsonl", "", "the file is empty (no rows)"),
        ("blank.jsonl", "\n\n  \n", "the file is empty (no rows)"),
        ("empty.csv", "", "the file is empty (no rows)"),
        ("header.csv", "text,label\n", "the file has a header line but no rows"),
        ("empty.txt", "", "the file is empty (no rows)"),
    ],
)
def test_an_empty_file_is_named_as_empty(tmp_path: Path, name: str, content: str, said: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{name}: {said}")):
        read_file(path)
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])  # the inspector says it too
    assert result.exit_code == 1 and said in result.output and "bug in tunelab" not in result.output


def test_a_json_error_ending_in_at_says_it_once(tmp_path: Path) -> None:
    path = tmp_path / "ctrl.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": "tab\there", "label": "b"}\n', encoding="utf-8")
    rows = read_file(path).rows
    assert rows[1].error == "not valid JSON (Invalid control character at column 14)"  # the tab
