"""task: token_classify (NER): CoNLL and {tokens, tags} data, first-sub-token labels, entity scores as
seqeval computes them, and a run end to end with its baselines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import SHARED_DATA, build_tokenizer, make_recipe, write_jsonl
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.data.formats import load_split
from tunelab.data.records import Tagged
from tunelab.data.tagged import tokenize_tagged
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy
from tunelab.errors import DataError
from tunelab.evaluation.tagging import entity_scores, tagging_baselines
from tunelab.evaluation.target import evaluate_file, load_target
from tunelab.runner import train

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_sentences_become_tagged_records(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    split = load_split(path, kind="tagged")
    assert split.format == "tagged"
    assert split.records == [
        Tagged(("EU", "rejects", "German", "call"), ("B-ORG", "O", "B-MISC", "O")),
        Tagged(("Peter", "Blackburn"), ("B-PER", "I-PER")),
    ]
    assert [r.source for r in split.records] == [f"{path}:3", f"{path}:8"]
    # The tag column is configurable: the chunk tags are column 2.
    chunks = load_split(path, kind="tagged", tag_column=2).records
    assert chunks[0].tags == ("B-NP", "B-VP", "B-NP", "I-NP")


def test_a_conll_line_without_its_tag_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text(CONLL.replace("German JJ B-NP B-MISC", "German"))
    with pytest.raises(DataError) as error:
        load_split(path, kind="tagged")
    assert f"{path}:5: expected a token and its tag, got 'German'" in str(error.value)
    # on_error: skip leaves that sentence out, counted, and keeps the other.
    split = load_split(path, kind="tagged", on_error="skip")
    assert [r.tokens for r in split.records] == [("Peter", "Blackburn")] and len(split.bad_rows) == 1


def test_jsonl_rows_and_their_mistakes(tmp_path: Path) -> None:
    rows = [
        {"tokens": ["Anna", "lives", "in", "Lisbon"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Tom", "left"], "tags": ["B-PER"]},
        {"tokens": ["x", ""], "tags": ["O", "O"]},
    ]
    path = write_jsonl(tmp_path / "ner.jsonl", rows)
    with pytest.raises(DataError) as error:
        load_split(path, kind="tagged")
    text = str(error.value)
    assert f"{path}:2: tags: expected one tag per token (2), got 1" in text
    assert f"{path}:3: tokens[1]: expected a word, got ''" in text


def test_only_the_first_sub_token_of_a_word_carries_its_tag() -> None:
    tokenizer = build_tokenizer()
    word = next(w for w in ("balance", "transfer", "morning") if len(tokenizer.tokenize(w)) == 3)
    record = Tagged(("Anna", word, "left"), ("B-PER", "I-PER", "O"))
    tag_map = {"O": 0, "B-PER": 1, "I-PER": 2}
    [example], _ = tokenize_tagged(tokenizer, [record], tag_map, LengthPolicy(64))
    pieces = [tokenizer.convert_ids_to_tokens(i) for i in example["input_ids"]]
    start = len(tokenizer.tokenize("Anna"))
    assert len(pieces) == start + 3 + len(tokenizer.tokenize("left"))  # no special tokens in this tokenizer
    assert example["labels"][0] == 1  # Anna: B-PER on its first piece
    assert example["labels"][start : start + 3] == [2, IGNORE_INDEX, IGNORE_INDEX]  # the word in 3 pieces
    assert [label for label in example["labels"] if label != IGNORE_INDEX] == [1, 2, 0]  # one per word


def test_entity_scores_are_seqevals() -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"], ["O", "B-PER"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "O"], ["O", "B-PER"]]
    scores = entity_scores(gold, predicted)
    # By hand: 2 of the 4 predicted entities are right (Anna..., the last PER); 2 of 4 gold are found.
    assert scores["micro"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert scores["micro"]["precision"] == pytest.approx(precision_score(gold, predicted))
    assert scores["micro"]["recall"] == pytest.approx(recall_score(gold, predicted))
    assert scores["micro"]["f1"] == pytest.approx(f1_score(gold, predicted))
    assert scores["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert scores["per_type"]["LOC"]["recall"] == 0.0 and scores["per_type"]["ORG"]["precision"] == 0.0


def test_the_baselines_need_no_model() -> None:
    train = [Tagged(("Anna", "lives", "in", "Lisbon"), ("B-PER", "O", "O", "B-LOC"))]
    scored = [Tagged(("Lisbon", "likes", "Anna"), ("B-LOC", "O", "B-PER"))]
    baselines = tagging_baselines(train, [list(scored[0].tags)], scored, "test")
    assert baselines["all_O"]["test_entity_f1"] == 0.0
    assert baselines["all_O"]["test_accuracy"] == pytest.approx(1 / 3)
    assert baselines["majority_tag"]["test_entity_f1"] == 1.0  # each word's training tag is right here


NAMES = ["Anna", "Tom", "Mei", "Omar", "Lena", "Hugo", "Sana", "Erik", "Rosa", "Ivan"]
PLACES = ["Lisbon", "Porto", "Osaka", "Lyon", "Quito", "Accra", "Cork", "Bergen", "Brno", "Leeds"]
PATTERNS = [
    ("{p} lives in {c} .", ("B-PER", "O", "O", "B-LOC", "O")),
    ("{p} flew to {c} today", ("B-PER", "O", "O", "B-LOC", "O")),
    ("in {c} , {p} smiled", ("O", "B-LOC", "O", "B-PER", "O")),
]


def _sentences(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        text, tags = rng.choice(PATTERNS)
        tokens = text.format(p=rng.choice(NAMES), c=rng.choice(PLACES)).split()
        rows.append({"tokens": tokens, "tags": list(tags)})
    return rows


def test_a_tagger_trains_and_is_scored_beside_its_baselines(tmp_path: Path, tiny_bert: Path) -> None:
    train_file = write_jsonl(tmp_path / "ner_train.jsonl", _sentences(48, seed=1))
    test_file = write_jsonl(tmp_path / "ner_test.jsonl", _sentences(12, seed=2))
    recipe = make_recipe(
        tmp_path, tiny_bert, "token_classify", method={"name": "full"},
        data={"train": str(train_file), "validation": None, "test": str(test_file), "dedup": False},
        train={"epochs": 12, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "eval_every": 1000, "save_every": 1000},
    )  # fmt: skip
    result = train(load_recipe(recipe))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    scored = json.loads((result.run_dir / "eval.json").read_text())

    assert summary["status"] == "completed"
    assert set(summary["baselines"]) == {"all_O", "majority_tag"}
    assert summary["baselines"]["all_O"]["test_entity_f1"] == 0.0
    f1 = summary["metrics"]["test_entity_f1"]
    assert f1 == scored["fine_tuned"]["test_entity_f1"] == scored["entities"]["micro"]["f1"]
    assert f1 > 0.9  # three sentence patterns: a tagger learns them
    assert set(scored["entities"]["per_type"]) == {"LOC", "PER"} and scored["tags"][0] == "O"
    assert summary["metrics"]["test_loss"] < summary["before_training"]["test_loss"]
    page = (result.run_dir / "report.html").read_text()
    entities = page[page.index('<section id="entities">') : page.index('<section id="forgetting">')]
    assert "<td>PER</td>" in entities and "<td>LOC</td>" in entities and "<td>micro</td>" in entities
    # `tunelab eval` rebuilds the tagger from final/ and gets the run's own numbers.
    again = evaluate_file(load_target(str(result.run_dir)), str(test_file))
    assert again["metrics"]["eval_entity_f1"] == pytest.approx(f1)
    assert again["metrics"]["eval_loss"] == pytest.approx(summary["metrics"]["test_loss"], abs=1e-6)
    assert again["entities"]["per_type"] == scored["entities"]["per_type"]

    # `tunelab predict` tags words given as tokens or as text, and names the entities they spell.
    rows = [json.loads(line) for line in test_file.read_text().splitlines()]
    long_text = " ".join(["Anna lives in Lisbon ."] * 30)  # past max_seq_len (64): the rest is untagged
    asked = [{"tokens": r["tokens"], "id": i} for i, r in enumerate(rows)] + [{"text": long_text}]
    out = tmp_path / "tags.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(result.run_dir),
            "--data",
            str(write_jsonl(tmp_path / "ask.jsonl", asked)),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    right = sum(
        g == t
        for row, r in zip(got, rows[: len(got)], strict=False)
        for g, t in zip(row["pred_tags"], r["tags"], strict=True)
    )
    assert right / sum(len(r["tags"]) for r in rows) > 0.9 and got[0]["id"] == 0
    first = got[0]
    spans = [(e["type"], e["text"]) for e in first["pred_entities"]]
    assert spans == [
        (t[2:], w)
        for w, t in zip(first["pred_tokens"], first["pred_tags"], strict=True)
        if t.startswith("B-")
    ]
    long = got[-1]
    assert len(long["pred_tags"]) == 150 and long["pred_untagged_words"] > 0 and long["pred_tags"][-1] is None
    assert long["pred_tags"].count(None) == long["pred_untagged_words"]


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="../shared/data/conll2003 is absent")
def test_conll2003_reads_as_tagged_sentences() -> None:
    split = load_split(SHARED_DATA / "conll2003" / "dev.txt", kind="tagged")
    tags = {tag for record in split.records for tag in record.tags}
    assert len(split.records) > 3000 and not split.bad_rows
    assert {"B-PER", "I-PER", "B-LOC", "B-ORG", "B-MISC", "O"} <= tags


def test_a_byte_level_tokenizer_encodes_each_word_as_after_a_space(tmp_path: Path) -> None:
    """RoBERTa-style tokenizers mark a word that follows a space (Ġ); pre-split words must keep it."""
    from transformers import RobertaTokenizer

    from tunelab.config import ModelConfig
    from tunelab.models.load import load_tokenizer

    model = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    RobertaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(ModelConfig(name=str(tmp_path)), "token_classify")
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer(["Where", "is"], is_split_into_words=True)["input_ids"]
    )
    assert "Ġis" in pieces  # as in "Where is": without add_prefix_space it would be "is"
