"""Every format in, canonical records out; every bad row named as file:line: reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.data.fields import Columns
from tunelab.data.formats import load_split
from tunelab.data.inspect import inspect_file
from tunelab.data.labels import build_label_map
from tunelab.data.records import Chat, Labeled, Message, Preference, Rated, Text
from tunelab.errors import DataError


def one(path: Path, **kwargs) -> object:
    split = load_split(path, **kwargs)
    assert len(split.records) == 1
    return split.records[0]


def test_openai_chat_with_system_and_weights(tmp_path: Path) -> None:
    row = {
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "draft", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "hello"},
        ],
    }
    chat = one(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert isinstance(chat, Chat)
    assert [(m.role, m.content, m.weight) for m in chat.messages] == [
        ("system", "Be brief.", None), ("user", "hi", None), ("assistant", "draft", 0),
        ("user", "again", None), ("assistant", "hello", None),
    ]  # fmt: skip
    assert chat.source == f"{tmp_path / 'c.jsonl'}:1"


def test_sharegpt(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    chat = one(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert chat == Chat((Message("system", "S"), Message("user", "Q"), Message("assistant", "A")))


@pytest.mark.parametrize(
    ("row", "user"),
    [
        ({"instruction": "Add", "input": "2 and 3", "output": "5"}, "Add\n\n2 and 3"),
        ({"instruction": "Say hi", "input": "", "output": "hi"}, "Say hi"),
    ],
)
def test_alpaca_with_and_without_input(tmp_path: Path, row: dict, user: str) -> None:
    chat = one(write_jsonl(tmp_path / "a.jsonl", [row]))
    assert chat == Chat((Message("user", user), Message("assistant", row["output"])))


def test_prompt_completion(tmp_path: Path) -> None:
    chat = one(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2=", "completion": "4"}]))
    assert chat == Chat((Message("user", "2+2="), Message("assistant", "4")))


def test_plain_text_per_line_and_per_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("first line\n\nsecond line\n", encoding="utf-8")
    split = load_split(path)
    assert split.format == "text" and [r.text for r in split.records] == ["first line", "second line"]
    assert [r.source for r in split.records] == [f"{path}:1", f"{path}:3"]
    assert load_split(path, text_unit="file").records == [Text("first line\n\nsecond line\n")]


def test_labeled_text_with_pairs_and_configured_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [{"s1": "a cat", "s2": "a dog", "y": 1}])
    record = one(path, columns=Columns(text="s1", text_pair="s2", label="y"))
    assert record == Labeled(text="a cat", text_pair="a dog", label="1")


def test_multiple_choice_becomes_labeled_text(tmp_path: Path) -> None:
    row = {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1}
    record = one(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert record == Labeled(text="2+2?\nA. 3\nB. 4\nC. 5", label="B")


def test_preference_pairs_plain_and_hh_rlhf(tmp_path: Path) -> None:
    plain = {"prompt": "Q?", "chosen": "good", "rejected": "bad"}
    hh = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: A pun.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.",
    }
    records = load_split(write_jsonl(tmp_path / "p.jsonl", [plain, hh]), fmt="preference").records
    assert records[0] == Preference((Message("user", "Q?"),), "good", "bad")
    assert records[1] == Preference(
        (Message("user", "hi"), Message("assistant", "hello"), Message("user", "joke?")), "A pun.", "No."
    )


KTO_ROWS = [
    # As tunelab's feedback exporter and TRL's conversational unpaired format write them.
    {
        "prompt": [{"role": "user", "content": "Where is my order?"}],
        "completion": [{"role": "assistant", "content": "It was due on Monday."}],
        "label": True,
    },
    {"prompt": "Hello there!", "completion": "Bye.", "label": False},
]


@pytest.mark.parametrize("kind", [None, "rated"])
def test_prompt_completion_rows_with_a_label_are_kto_rows(tmp_path: Path, kind: str | None) -> None:
    split = load_split(write_jsonl(tmp_path / "k.jsonl", KTO_ROWS), kind=kind)
    assert split.format == "kto"  # not prompt_completion, nor labeled: the label is not a class
    assert split.records == [
        Rated((Message("user", "Where is my order?"),), "It was due on Monday.", True),
        Rated((Message("user", "Hello there!"),), "Bye.", False),
    ]
    # `tunelab data inspect` counts the two kinds (desirable_weight is there to balance them).
    assert inspect_file(tmp_path / "k.jsonl")["labels"]["counts"] == {"desirable": 1, "undesirable": 1}
    # The same fields without a label, or with a label that is not true/false, are prompt/completion.
    rows = [{"prompt": "Hello there!", "completion": "Bye."}]
    assert load_split(write_jsonl(tmp_path / "pc.jsonl", rows), kind="chat").format == "prompt_completion"
    rows = [{"prompt": "Hello there!", "completion": "Bye.", "label": "greeting"}]
    assert load_split(write_jsonl(tmp_path / "pl.jsonl", rows), kind="chat").format == "prompt_completion"


@pytest.mark.parametrize(
    ("kind", "why"), [("chat", "task sft would learn every completion"), ("preference", "no pairs")]
)
def test_kto_rows_are_refused_where_sft_or_a_pair_objective_would_read_them(
    tmp_path: Path, kind: str, why: str
) -> None:
    with pytest.raises(DataError) as err:
        load_split(write_jsonl(tmp_path / "k.jsonl", KTO_ROWS), kind=kind)
    assert f"these are KTO rows (prompt, completion, label: true/false): {why}" in str(err.value)
    assert "preference.objective: kto" in str(err.value)
    # Asked for by name, the rows are read as the format says.
    rows = [{**row, "prompt": "Q?", "completion": "A."} for row in KTO_ROWS]
    path = write_jsonl(tmp_path / "k2.jsonl", rows)
    assert len(load_split(path, fmt="prompt_completion", kind="chat").records) == 2


def test_a_kto_label_that_is_not_a_boolean_is_a_named_bad_row(tmp_path: Path) -> None:
    rows = [
        *KTO_ROWS,
        {"prompt": "Q?", "completion": "A.", "label": "yes"},
        {"prompt": "Q?", "completion": "A.", "label": 1},
        {"prompt": "Q?", "completion": [{"role": "user", "content": "A."}], "label": True},
    ]
    path = write_jsonl(tmp_path / "k.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_split(path)
    text = str(err.value)
    assert "3 bad row(s) out of 5 (kto format)" in text
    assert f"{path}:3: label: expected true (desirable) or false (undesirable), got 'yes'" in text
    assert f"{path}:4: label: expected true (desirable) or false (undesirable), got 1" in text
    assert (
        f"{path}:5: completion: expected text or a list of one {{role: assistant, content}} message" in text
    )


def test_hh_transcripts_read_as_chats_from_a_renamed_column(tmp_path: Path) -> None:
    pair = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: A pun.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.",
    }
    path = write_jsonl(tmp_path / "hh.jsonl", [pair])
    chat = one(path, fmt="hh_dialogue", columns=Columns(rename={"dialogue": "chosen"}))
    assert chat == Chat(
        (
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "joke?"),
            Message("assistant", "A pun."),
        )
    )
    with pytest.raises(DataError, match=r"hh\.jsonl:1: dialogue: missing"):
        load_split(path, fmt="hh_dialogue")  # without the column named, there is no `dialogue`
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"dialogue": "\n\nHuman: hi\n\nAssistant: "}])
    with pytest.raises(DataError, match=r"empty\.jsonl:1: dialogue turn 2 \(assistant\): empty"):
        load_split(empty, fmt="hh_dialogue")


def test_columns_rename_source_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"dialogue": "#P1#: hi", "summary1": "a greeting"}])
    record = one(
        path,
        fmt="prompt_completion",
        columns=Columns(rename={"prompt": "dialogue", "completion": "summary1"}),
    )
    assert record == Chat((Message("user", "#P1#: hi"), Message("assistant", "a greeting")))


@pytest.mark.parametrize("container", ["json", "csv", "tsv", "parquet", "jsonl.gz"])
def test_every_container_reads_the_same_rows(tmp_path: Path, container: str) -> None:
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    path = tmp_path / f"data.{container}"
    if container == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif container in ("csv", "tsv"):
        sep = "," if container == "csv" else "\t"
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in rows))
    elif container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    split = load_split(path)
    assert split.format == "labeled"
    assert [(r.text, r.label) for r in split.records] == [("good film", "pos"), ("bad film", "neg")]


BAD_CHATS = [
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}',
    '{"text": "no messages here"}',
    '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    '{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]}',
    '{"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}',
    '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}',
    '{"messages": [{"role": "user", "content": "hi"}, ',
    '{"messages": [{"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]}',
]


@pytest.fixture
def bad_chats(tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(BAD_CHATS) + "\n", encoding="utf-8")
    return path


def test_fail_lists_every_bad_row_with_its_line(bad_chats: Path) -> None:
    with pytest.raises(DataError) as err:
        load_split(bad_chats, fmt="chat")
    text = str(err.value)
    assert "4 bad row(s) out of 8" in text
    assert f"{bad_chats}:2: missing 'messages'" in text
    assert f"{bad_chats}:4: messages[0]: unknown role 'robot'" in text
    assert f"{bad_chats}:6: messages[1].content: empty" in text
    assert f"{bad_chats}:7: not valid JSON" in text
    assert "data.on_error: skip" in text


def test_skip_keeps_every_other_row_and_counts_the_bad_ones(bad_chats: Path) -> None:
    split = load_split(bad_chats, fmt="chat", on_error="skip")
    assert [r.source.rsplit(":", 1)[1] for r in split.records] == ["1", "3", "5", "8"]
    assert len(split.bad_rows) == 4 and split.total_rows == 8


def test_a_file_that_is_not_json_says_so(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("text,label\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(DataError, match="no line of this file is a JSON object; is it really JSONL"):
        load_split(path)


def test_a_missing_label_column_names_the_columns_and_the_setting(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "intent": "x"}])
    with pytest.raises(DataError) as err:
        load_split(path, fmt="labeled")
    assert "no column 'label'; the file has: intent, text" in str(err.value)
    assert "set data.label_column" in str(err.value)


def test_undetectable_format_names_the_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"foo": 1, "bar": "x"}])
    with pytest.raises(DataError, match=r"cannot tell the data format from its fields \(bar, foo\)"):
        load_split(path)


def test_csv_rows_keep_their_line_numbers_across_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('text,label\n"two\nlines",a\n,b\nfine,a\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_split(path)
    assert f"{path}:4: text: empty" in str(err.value)  # an empty CSV field is an empty string
    assert "1 bad row(s) out of 3" in str(err.value)


def test_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood film \t1\nbad film \t0\nok \t10\n", encoding="utf-8")
    records = load_split(path, columns=Columns(text="sentence")).records
    assert build_label_map(records) == {"0": 0, "1": 1, "10": 2}
    assert build_label_map([Labeled("t", n) for n in ["pos", "neg", "neu"]]) == {"neg": 0, "neu": 1, "pos": 2}


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        load_split(tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.xml'"):
        load_split(tmp_path / "x.xml")


def test_hub_dataset_ids_pick_the_split_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.data import hub

    snapshot = tmp_path / "snapshot"
    (snapshot / "data").mkdir(parents=True)
    write_jsonl(snapshot / "data" / "train-00000-of-00002.jsonl", [{"text": "a", "label": "x"}])
    write_jsonl(snapshot / "data" / "train-00001-of-00002.jsonl", [{"text": "b", "label": "y"}])
    write_jsonl(snapshot / "data" / "validation.jsonl", [{"text": "c", "label": "x"}])
    asked = []
    monkeypatch.setattr(hub, "download", lambda spec: asked.append(spec) or snapshot)

    train = load_split("hf:org/sentiment@v1.0", kind="labeled")
    assert [r.text for r in train.records] == ["a", "b"]
    assert asked[0] == hub.HubSpec("org/sentiment", "v1.0", "train")
    assert [r.text for r in load_split("hf:org/sentiment", hub_split="validation").records] == ["c"]
    with pytest.raises(DataError, match="no 'test' files in the dataset"):
        load_split("hf:org/sentiment:test")


def test_hub_dataset_offline_says_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"dataset 'nobody/nothing' could not be fetched from the local cache"
    ):
        load_split("hf:nobody/nothing")


def test_a_malformed_hub_id_is_a_recipe_error(tmp_path: Path) -> None:
    from tunelab.config import load_recipe
    from tunelab.errors import RecipeError

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: x\ntask: sft\nmodel: {name: m}\ndata: {train: 'hf:no-slash'}\nmethod: {name: full}\n"
    )
    with pytest.raises(RecipeError, match=r"data\.train: 'hf:no-slash' is not a Hub dataset id"):
        load_recipe(recipe)


def test_token_tag_lines_are_not_taken_for_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "ner.txt"
    path.write_text(
        "-DOCSTART- O\n\nEU B-ORG\nrejects O\nGerman B-MISC\ncall O\nto O\n\nPeter B-PER\nBlackburn I-PER\n"
    )
    with pytest.raises(DataError) as refused:
        load_split(path)
    assert refused.value.message == (
        f"{path}: this looks like CoNLL token-tag data (one token and its tag per line, e.g. 'EU B-ORG'), "
        "not plain text"
    )
    assert refused.value.fix is not None and "task: token_classify" in refused.value.fix
    prose = tmp_path / "prose.txt"
    prose.write_text(
        "It was the best of times.\nIt was the worst of times.\nO\nAn age of wisdom.\nOf foolishness O\n"
    )
    assert load_split(prose).format == "text"


# ---------------------------------------------------------------------------------------------
# Prediction inputs: the same converters, minus the answer


def test_prediction_rows_read_as_training_reads_them(tmp_path: Path) -> None:
    from tunelab.data.inputs import read_inputs

    alpaca = {"instruction": "Summarise", "input": "a long text", "output": "ignored"}
    rows = [
        alpaca,
        {"id": 7, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "old"}]},
        {"dialogue": "renamed prompt", "system": "be brief"},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    inputs = read_inputs(path, Columns(rename={"prompt": "dialogue"}), generative=True)

    trained_on = load_split(write_jsonl(tmp_path / "train.jsonl", [alpaca])).records[0]
    assert inputs[0].messages == trained_on.messages[:1]  # the user turn training built
    assert inputs[1].chat() == [{"role": "user", "content": "hi"}] and inputs[1].copied["id"] == 7
    assert inputs[2].chat() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "renamed prompt"},
    ]


def test_prediction_rows_name_every_bad_row(tmp_path: Path) -> None:
    from tunelab.data.inputs import read_inputs

    rows = [
        {"conversations": [{"from": "robot", "value": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]},
        {"instruction": "   "},
        {"question": "no prompt field"},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(DataError) as err:
        read_inputs(path, Columns(), generative=True)
    text = str(err.value)
    assert f"{path}: 3 bad row(s) out of 4; nothing was predicted" in text
    assert f"{path}:1: conversations[0]: unknown speaker 'robot'" in text
    assert f"{path}:3: instruction: empty" in text
    assert f"{path}:4: no messages, conversations, prompt or instruction field (fields: question)" in text

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"q": "a", "p": "b"}, {"q": "c"}])
    with pytest.raises(DataError, match=r"pairs.jsonl:2: p: missing"):
        read_inputs(pairs, Columns(text="q", text_pair="p"), generative=False)


def test_a_prompt_template_and_a_system_prompt_write_the_conversations(tmp_path: Path) -> None:
    from tunelab.data.inputs import read_inputs

    rows = [
        {"dialogue": "#Person1#: Hi.\n#Person2#: Hello.", "summary": "They greet."},
        {"summary": "No dialogue here."},
    ]
    path = write_jsonl(tmp_path / "dialogsum.jsonl", rows)
    columns = Columns(
        rename={"completion": "summary"},
        prompt_template="Summarize the dialogue:\n\n{dialogue}",
        system_prompt="Answer in one sentence.",
    )
    split = load_split(path, columns=columns, on_error="skip")
    assert split.format == "prompt_completion"
    assert split.records[0].messages == (
        Message("system", "Answer in one sentence."),
        Message("user", "Summarize the dialogue:\n\n#Person1#: Hi.\n#Person2#: Hello."),
        Message("assistant", "They greet."),
    )
    assert split.bad_rows == [
        f"{path}:2: prompt_template: the row has no field 'dialogue' (fields: completion, summary)"
    ]
    # predict writes the same prompt from the same row, without the answer.
    [asked] = read_inputs(write_jsonl(tmp_path / "one.jsonl", rows[:1]), columns, generative=True)
    assert asked.messages == split.records[0].messages[:2]


def test_a_prompt_template_that_names_nothing_or_is_broken_is_a_recipe_problem(tmp_path: Path) -> None:
    import yaml

    from tunelab.config import load_recipe
    from tunelab.errors import RecipeError

    data = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}])
    for template, reason in (("Summarize:", "names no field"), ("Summarize {dialogue", "not a template")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "t", "task": "sft", "model": {"name": str(tmp_path)}, "method": {"name": "lora"},
            "data": {"train": str(data), "prompt_template": template},
        }))  # fmt: skip
        with pytest.raises(RecipeError, match=f"data.prompt_template: {reason}"):
            load_recipe(recipe)
