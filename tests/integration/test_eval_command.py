"""`tunelab eval` rebuilds a run's model from final/ and scores a file with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import exact, make_recipe
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.runner import train

runner = CliRunner()


@exact
@pytest.mark.parametrize(
    "method", [{"name": "lora", "r": 4, "alpha": 8}, {"name": "full"}], ids=["lora", "full"]
)
def test_eval_of_a_classify_run_reproduces_its_final_validation_scores(
    tmp_path: Path, tiny_bert: Path, method: dict
) -> None:
    # The last validation pass ran on the final weights; rebuilding them from final/ (adapter on its
    # base, or full weights) must give the same numbers.
    recipe = make_recipe(
        tmp_path, tiny_bert, "classify", method=method, train={"max_steps": 3, "eval_every": 3}
    )
    run = train(load_recipe(recipe))
    result = runner.invoke(app, ["eval", str(run.run_dir), "--data", str(tmp_path / "val.jsonl")])
    assert result.exit_code == 0, result.output
    scored = json.loads((run.run_dir / "eval-val.json").read_text())
    assert scored["metrics"]["eval_loss"] == pytest.approx(run.summary.metrics["val_loss"], abs=1e-6)
    assert scored["metrics"]["eval_accuracy"] == pytest.approx(run.summary.metrics["val_accuracy"], abs=1e-9)
    assert len(scored["confusion_matrix"]) == 3 and "macro precision" in result.output
    assert (run.run_dir / "eval.json").is_file()  # the run's own scores are not overwritten


@exact
def test_eval_of_an_sft_run_with_generative_metrics(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_steps": 2, "eval_every": 2})
    run = train(load_recipe(recipe))
    out = tmp_path / "scores.json"
    result = runner.invoke(
        app,
        ["eval", str(run.run_dir / "final"), "--data", str(tmp_path / "val.jsonl"),
         "--metrics", "bleu,rouge,exact_match", "--max-new-tokens", "4", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())["metrics"]
    assert scores["eval_loss"] == pytest.approx(run.summary.metrics["val_loss"], abs=1e-6)
    assert {"eval_bleu", "eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_exact_match"} <= set(scores)
    assert 0 <= scores["eval_exact_match"] <= 1


def test_eval_rejects_unknown_metrics_and_base_classifiers(tmp_path: Path, tiny_bert: Path) -> None:
    data = tmp_path / "x.jsonl"
    data.write_text('{"text": "a", "label": "b"}\n')
    bad = runner.invoke(app, ["eval", str(tiny_bert), "--data", str(data), "--metrics", "bleurt"])
    assert bad.exit_code == 1 and "--metrics: unknown bleurt" in bad.output
    base = runner.invoke(app, ["eval", str(tiny_bert), "--data", str(data), "--task", "classify"])
    assert base.exit_code == 1 and "needs a trained head" in base.output


@exact
def test_eval_reads_and_cuts_a_file_as_the_run_did(tmp_path: Path, tiny_llama: Path) -> None:
    # Renamed columns and a short max_seq_len: scoring the run's own validation file with no flags
    # uses both, and gives back the run's last validation loss.
    from tests.conftest import CHATS, VAL_CHATS, write_jsonl

    def as_columns(chats: list[dict]) -> list[dict]:
        return [
            {"question": c["messages"][-2]["content"], "answer": c["messages"][-1]["content"]} for c in chats
        ]

    write_jsonl(tmp_path / "qa_train.jsonl", as_columns(CHATS))
    val = write_jsonl(tmp_path / "qa_val.jsonl", as_columns(VAL_CHATS))
    recipe = make_recipe(
        tmp_path, tiny_llama, "sft", train={"max_steps": 2, "eval_every": 2, "max_seq_len": 24}
    )
    overrides = [f"data.train={tmp_path / 'qa_train.jsonl'}", f"data.validation={val}", "data.format=prompt_completion",
                 "data.columns={prompt: question, completion: answer}"]  # fmt: skip
    run = train(load_recipe(recipe, overrides))
    out = tmp_path / "scores.json"
    result = runner.invoke(app, ["eval", str(run.run_dir), "--data", str(val), "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = json.loads(out.read_text())
    assert scored["max_seq_len"] == 24
    assert scored["metrics"]["eval_loss"] == pytest.approx(run.summary.metrics["val_loss"], abs=1e-6)
    # Told otherwise, it does otherwise: a longer cut scores the answers that 24 tokens truncated.
    runner.invoke(
        app, ["eval", str(run.run_dir), "--data", str(val), "--max-seq-len", "64", "--out", str(out)]
    )
    assert json.loads(out.read_text())["max_seq_len"] == 64
    # predict reads the run's own file through the run's column mapping (question -> prompt).
    predictions = tmp_path / "answers.jsonl"
    predicted = runner.invoke(
        app,
        ["predict", str(run.run_dir), "--data", str(val), "--out", str(predictions), "--max-new-tokens", "6"],
    )
    assert predicted.exit_code == 0, predicted.output
    answers = [json.loads(line)["pred_answer"] for line in predictions.read_text().splitlines()]
    assert len(answers) == len(VAL_CHATS)

    # Several references per row: each example scores its best one. With the model's own answer among
    # them every example scores ROUGE 1; against the others alone, less.
    rows = [
        {"question": c["messages"][-2]["content"], "ref_a": "zebra quantum", "ref_b": answer}
        for c, answer in zip(VAL_CHATS, answers, strict=True)
    ]
    multi = write_jsonl(tmp_path / "multi.jsonl", rows)
    base = ["eval", str(run.run_dir), "--data", str(multi), "--metrics", "rouge", "--max-new-tokens", "6"]
    both = runner.invoke(app, [*base, "--references", "ref_a,ref_b", "--out", str(out)])
    assert both.exit_code == 0, both.output
    scored = json.loads(out.read_text())
    assert scored["references"] == ["ref_a", "ref_b"]
    assert scored["metrics"]["eval_rouge1"] == pytest.approx(1.0) == scored["metrics"]["eval_rougeL"]
    one = runner.invoke(app, [*base, "--references", "ref_a", "--out", str(out)])
    assert one.exit_code == 0, one.output
    assert json.loads(out.read_text())["metrics"]["eval_rouge1"] < 0.5
    missing = runner.invoke(app, [*base, "--references", "ref_a,ref_c"])
    assert missing.exit_code == 1
    assert "multi.jsonl:1: --references column 'ref_c': no reference text" in " ".join(missing.output.split())
