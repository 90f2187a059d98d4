"""Reading data: every bad row is named as file:line: reason, nothing is dropped silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.data.formats import build_label_map, load_chats, load_labeled
from tunelab.data.records import Labeled
from tunelab.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_chat_rows_become_canonical_records_with_weights(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "draft", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    (chat,) = load_chats(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[2].weight == 0 and chat.messages[4].weight is None
    assert chat.source.endswith("c.jsonl:1")


def test_every_bad_chat_row_is_listed_with_its_line(tmp_path: Path) -> None:
    lines = [
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}',
        '{"text": "no messages here"}',
        '{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]}',
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}',
        '{"messages": [{"role": "user", "content": "only a question"}]}',
        "",
        '{"messages": [{"role": "user", "content": "hi"}, ',
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with pytest.raises(DataError) as err:
        load_chats(path)

    text = str(err.value)
    assert "5 bad row(s) out of 6" in text
    assert f"{path}:2: missing 'messages'" in text
    assert f"{path}:3: messages[0]: unknown role 'robot'" in text
    assert f"{path}:4: messages[1]: empty or missing content for role 'assistant'" in text
    assert f"{path}:5: no assistant message" in text
    assert f"{path}:7: not valid JSON" in text


def test_a_file_that_is_not_json_says_so(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("text,label\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(DataError, match="no line of this file is a JSON object; is it really JSONL"):
        load_labeled(path, text_column="text", label_column="label")


def test_a_missing_label_column_names_the_columns_and_the_setting(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "intent": "x"}])
    with pytest.raises(DataError) as err:
        load_labeled(path, text_column="text", label_column="label")
    assert "no column 'label'; the file has: intent, text" in str(err.value)
    assert "set data.label_column" in str(err.value)


def test_csv_rows_keep_their_line_numbers_across_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"two\nlines",a\n,b\nfine,a\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_labeled(path, text_column="text", label_column="label")
    assert f"{path}:4: empty or missing 'text'" in str(err.value)
    assert "1 bad row(s) out of 3" in str(err.value)


def test_tsv_and_integer_labels(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood film \t1\nbad film \t0\nok \t10\n", encoding="utf-8")
    records = load_labeled(path, text_column="sentence", label_column="label")
    assert [r.label for r in records] == ["1", "0", "10"]
    assert build_label_map(records) == {"0": 0, "1": 1, "10": 2}  # numeric, not string, order


def test_label_map_sorts_names() -> None:
    records = [Labeled(text="t", label=name) for name in ["pos", "neg", "neu", "neg"]]
    assert build_label_map(records) == {"neg": 0, "neu": 1, "pos": 2}


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_chats(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'"):
        load_chats(tmp_path / "x.xml")
