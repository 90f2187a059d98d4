"""Read the rows of a data file, whatever its container, each with a location for error messages.

Containers: .jsonl, .json (an array of objects), .csv, .tsv, .parquet, .txt, .conll; each may be
gzipped (.jsonl.gz, ...). CoNLL text (token-tag lines, a blank line between sentences) gives a row per
sentence, {tokens, tags}, for token_classify (tagged.py). A row is a dict of fields; its location is
the line number for line-based files and the item/row number otherwise, so every bad row can be named
as `file:where: reason`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tunelab.errors import DataError

CONTAINERS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".conll")


@dataclass(frozen=True)
class Row:
    where: str  # "12" (line) or "item 12" / "row 12" (1-based), for messages
    fields: dict[str, Any]
    error: str | None = None  # set when the row could not be parsed; fields is then empty


@dataclass
class ReadResult:
    path: Path
    container: str
    rows: list[Row]  # in file order; unparsable rows are kept, with `error` set

    @property
    def parsed(self) -> list[Row]:
        return [row for row in self.rows if row.error is None]

    @property
    def unreadable(self) -> list[str]:
        return [f"{self.path}:{row.where}: {row.error}" for row in self.rows if row.error is not None]

    @property
    def total(self) -> int:
        return len(self.rows)


def container_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in CONTAINERS:
        raise DataError(
            f"{path}: unsupported file type {''.join(path.suffixes) or '(none)'!r}",
            fix=f"use one of {', '.join(CONTAINERS)} (optionally .gz)",
        )
    return suffixes[-1]


def read_file(path: str | Path, *, text_unit: str = "line", tag_column: int = -1) -> ReadResult:
    """Read every row; rows that cannot be parsed are collected, never dropped silently.

    Text files hold a row per line, one per file (`text_unit: file`), or a sentence per row
    (`conll`: token-tag lines, the tag in `tag_column`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data file not found: {path.resolve()}", fix="check the path in the recipe's data section"
        )
    container = container_of(path)
    result = ReadResult(path=path, container=container, rows=[])
    if container == ".parquet":
        result.rows = list(_parquet_rows(path))
        return _refuse_empty(result)
    try:
        with _open_text(path) as handle:
            if container == ".jsonl":
                _jsonl_rows(handle, result)
            elif container == ".json":
                result.rows = list(_json_array_rows(path, handle))
            elif container in (".csv", ".tsv"):
                result.rows = list(_delimited_rows(path, handle, "\t" if container == ".tsv" else ","))
            else:
                result.rows = list(_text_rows(handle, text_unit, tag_column))
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    _refuse_empty(result)
    if container == ".jsonl" and result.rows and not result.parsed:
        raise DataError(
            f"{path}: no line of this file is a JSON object; is it really JSONL?",
            problems=result.unreadable[:3],
            fix='write one JSON object per line, e.g. {"text": "...", "label": "..."}',
        )
    return result


# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's). Files saved by Windows tools
# ("Unicode" in Notepad, Excel's "Unicode text") are UTF-16 with a BOM; Python's codecs named here
# read the BOM and drop it, so it never becomes part of the first field.
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _raw(path: Path) -> IO[bytes]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile is a binary IO
    return path.open("rb")


def encoding_of(path: Path) -> str:
    """UTF-8 (with or without a BOM), UTF-16 or UTF-32 by their BOM. Any other encoding fails to
    decode as UTF-8, and `_not_utf8` says so."""
    with _raw(path) as handle:
        start = handle.read(4)
    return next((name for bom, name in _BOMS if start.startswith(bom)), "utf-8")


def _open_text(path: Path) -> IO[str]:
    return io.TextIOWrapper(_raw(path), encoding=encoding_of(path), newline="")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    """Where the file stops being UTF-8, as a line number, and how to convert it."""
    with _raw(path) as handle:
        raw = handle.read()
    try:
        raw.decode(encoding_of(path))
        offset = len(raw)
    except UnicodeDecodeError as whole:
        offset = whole.start
    line = raw.count(b"\n", 0, offset) + 1
    byte = raw[offset : offset + 1].hex() or "?"
    guess = "UTF-16 without a byte-order mark" if b"\x00" in raw[:200] else "Latin-1 or Windows-1252, say"
    return DataError(
        f"{path}:{line}: not UTF-8 (byte 0x{byte}); the file is in another encoding ({guess}: {exc.reason})",
        fix=f"save it as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`"
        " (UTF-8, UTF-8 with a BOM, UTF-16 and UTF-32 with a BOM are read as they are)",
    )


def _refuse_empty(result: ReadResult) -> ReadResult:
    if result.rows:
        return result
    what = "has a header line but no rows" if result.container in (".csv", ".tsv") else "is empty (no rows)"
    if result.container in (".csv", ".tsv") and result.path.stat().st_size == 0:
        what = "is empty (no rows)"
    raise DataError(f"{result.path}: the file {what}", fix="point the recipe at a file that holds the data")


def _jsonl_rows(handle: IO[str], result: ReadResult) -> None:
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not rows
        try:
            value = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            result.rows.append(
                Row(str(line_no), {}, f"not valid JSON ({_json_reason(exc)} at column {exc.colno})")
            )
            continue
        except DuplicateKey as exc:
            result.rows.append(Row(str(line_no), {}, str(exc)))
            continue
        except RecursionError:
            result.rows.append(Row(str(line_no), {}, "JSON nested too deeply to read"))
            continue
        if not isinstance(value, dict):
            result.rows.append(Row(str(line_no), {}, f"expected a JSON object, got {type(value).__name__}"))
            continue
        result.rows.append(Row(str(line_no), value))


class DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json keeps the last of two equal keys and drops the first without a word; a row whose field is
    given twice is ambiguous, so it is a bad row instead."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _json_reason(exc: json.JSONDecodeError) -> str:
    # Some of json's messages end in "at" themselves ("Invalid control character at"): said once.
    return exc.msg.removesuffix(" at")


def _json_array_rows(path: Path, handle: IO[str]) -> Iterator[Row]:
    try:
        value = json.load(handle, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: not valid JSON ({_json_reason(exc)} at column {exc.colno})",
            fix="a .json file holds one array",
        ) from None
    except (DuplicateKey, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, DuplicateKey) else "JSON nested too deeply to read"
        raise DataError(f"{path}: {reason}", fix="a .json file holds one array of flat objects") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
        value = next(iter(value.values()))  # {"data": [...]}, a common wrapper
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    for i, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {i}: expected an object, got {type(item).__name__}")
        yield Row(f"item {i}", item)


# csv refuses fields over 128 KiB by default; a long document in one cell is data, not an attack.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _delimited_rows(path: Path, handle: IO[str], delimiter: str) -> Iterator[Row]:
    # QUOTE_MINIMAL with csv's defaults: quoted fields may span lines; reader.line_num is where a row ends.
    reader = csv.DictReader(handle, delimiter=delimiter)
    start = 2  # line 1 is the header
    try:
        for row in reader:
            extra: Any = row.pop(None, None)  # cells past the header: key None
            error = _extra_cells(extra)
            yield Row(str(start), {} if error else dict(row), error)
            start = reader.line_num + 1
    except csv.Error as exc:  # an unterminated quote, a NUL byte: the rest of the file cannot be split
        raise DataError(
            f"{path}:{reader.line_num}: not valid CSV ({exc})",
            fix="check the quoting around that line (a quote opened and never closed swallows the rest)",
        ) from None


def _extra_cells(extra: list[str] | None) -> str | None:
    # More cells than the header has: a cell was split (a delimiter inside unquoted text), not data to drop.
    if not extra:
        return None
    return f"{len(extra)} more cell(s) than the header has columns (an unquoted delimiter in a cell?)"


def _text_rows(handle: IO[str], unit: str, tag_column: int = -1) -> Iterator[Row]:
    if unit == "conll":
        yield from conll_rows(handle, tag_column)
        return
    if unit == "file":
        yield Row("1", {"text": handle.read()})
        return
    for line_no, line in enumerate(handle, start=1):
        if line.strip():
            yield Row(str(line_no), {"text": line.rstrip("\r\n")})


def conll_rows(lines: Iterable[str], tag_column: int = -1) -> Iterator[Row]:
    """One row per sentence, named by its first line: fields {tokens, tags}. A line without a tag
    column makes its sentence a bad row, named by that line."""
    sentence: list[tuple[str, str]] = []
    start, bad = "", None  # where the sentence starts; its first bad line, as a row
    for line_no, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if sentence or bad:
                yield bad or _sentence(start, sentence)
            sentence, bad = [], None
            continue
        start = start if sentence or bad else str(line_no)
        tag = _tag(parts, tag_column)
        if tag is None:
            bad = bad or Row(str(line_no), {}, f"expected a token and its tag, got {line.strip()!r}")
        else:
            sentence.append((parts[0], tag))
    if sentence or bad:
        yield bad or _sentence(start, sentence)


def _tag(parts: list[str], column: int) -> str | None:
    """The tag in `column` of a line's parts; None when the line has no such column besides the token."""
    if not -len(parts) <= column < len(parts) or column % len(parts) == 0:
        return None
    return parts[column]


def _sentence(where: str, sentence: list[tuple[str, str]]) -> Row:
    return Row(where, {"tokens": [token for token, _ in sentence], "tags": [tag for _, tag in sentence]})


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq  # optional heavy import, only for parquet files

    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield Row(f"row {i}", row)
