"""eval.metrics: an sft run generates answers to its test split with the base model (zero- and
few-shot) and with the fine-tuned model, scores each set, and keeps every answer in generations.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import CORPUS, crash_at_checkpoint, make_recipe, only_run_dir, write_jsonl
from tunelab.cli import app
from tunelab.config import ModelConfig, load_recipe
from tunelab.errors import RecipeError
from tunelab.evaluation.metrics import exact_match, rouge
from tunelab.generation import encode_chat, generate_batch
from tunelab.models.load import load_model
from tunelab.models.restore import load_trained
from tunelab.runner import train

runner = CliRunner()
QUESTIONS = [*CORPUS, "Where do I send the form?", "Is the branch open on Sunday?", "Can I pay by phone?"]


def _ja_chats(prompts: list[str]) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ja."}]}
        for p in prompts
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> tuple[Path, Path, str]:
    """A tiny Llama fine-tuned to answer every question with "ja.": (run folder, recipe, output)."""
    root = tmp_path_factory.mktemp("generative")
    train_file = write_jsonl(root / "ja_train.jsonl", _ja_chats(QUESTIONS[:8]))
    test_file = write_jsonl(root / "ja_test.jsonl", _ja_chats(QUESTIONS[8:]))
    recipe = make_recipe(
        root, tiny_llama, "sft", method={"name": "full"},
        data={"train": str(train_file), "validation": None, "test": str(test_file)},
        train={"epochs": 30, "batch_size": 4, "grad_accum": 1, "lr": 1e-2, "eval_every": 1000,
               "save_every": 1000, "log_every": 50},
        eval={"metrics": ["exact_match", "rouge"], "few_shot_k": 2, "max_new_tokens": 6},
    )  # fmt: skip
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    run_dir = next((root / "runs").glob("tiny-sft-*"))
    return run_dir, recipe, result.output


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]


def test_every_answer_is_kept_and_the_scores_are_those_of_the_kept_answers(
    run: tuple[Path, Path, str],
) -> None:
    run_dir, _, _ = run
    rows = _rows(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["reference"] for row in rows] == ["ja."] * 3
    assert rows[0]["prompt"] == [{"role": "user", "content": QUESTIONS[8]}]
    assert rows[0]["source"].endswith("ja_test.jsonl:1")
    answers = {name: [row[name] for row in rows] for name in ("zero_shot", "few_shot", "fine_tuned")}
    references = [row["reference"] for row in rows]

    assert answers["fine_tuned"] == ["ja."] * 3  # it learned the one answer
    assert summary["metrics"]["test_exact_match"] == 1.0
    for name in ("zero_shot", "few_shot"):
        scores = summary["baselines"][name]
        assert scores["test_exact_match"] == exact_match(answers[name], references)
        assert scores["test_rougeL"] == pytest.approx(rouge(answers[name], references)["rougeL"])
    assert summary["baselines"]["zero_shot"]["test_exact_match"] < 1.0  # the random base does not


def test_the_baseline_answers_are_the_base_models_and_the_fine_tuned_ones_reproduce(
    run: tuple[Path, Path, str], tiny_llama: Path
) -> None:
    run_dir, _, _ = run
    rows = _rows(run_dir)
    base = load_model(ModelConfig(name=str(tiny_llama), dtype="float32"), "sft")
    trained = load_trained(run_dir)
    prompts = [row["prompt"] for row in rows]
    # The base has no chat template of its own: the run rendered with chatml, so the test does too.
    base.tokenizer.chat_template = trained.tokenizer.chat_template
    encoded = [encode_chat(base.tokenizer, p) for p in prompts]
    assert generate_batch(base.model, base.tokenizer, encoded, max_new_tokens=6) == [
        r["zero_shot"] for r in rows
    ]
    # Few-shot prompts carry two training conversations first, so the base answers differently.
    assert [r["few_shot"] for r in rows] != [r["zero_shot"] for r in rows]


def test_the_terminal_shows_the_table_and_an_example_before_and_after(run: tuple[Path, Path, str]) -> None:
    _, _, output = run
    text = " ".join(output.split())
    assert "task metric, 3 test examples test_exact_match test_rougeL" in text
    assert "zero-shot (base model)" in text and "few-shot (base model)" in text
    assert "fine-tuned 1.0000 1.0000" in text
    assert "expected: ja." in text and "after: ja." in text and "before:" in text


def test_a_resumed_run_keeps_the_base_models_answers(
    run: tuple[Path, Path, str], tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The baselines' answers are written into the folder before the first step: a resumed run, which
    # has no untrained base to ask, reads them back and adds the fine-tuned ones.
    _, recipe_path, _ = run
    raw = yaml.safe_load(recipe_path.read_text())
    raw["output"]["dir"] = str(tmp_path / "runs")
    raw["train"].update({"epochs": 2, "save_every": 2})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    crash_at_checkpoint(monkeypatch, RuntimeError("power cut"), at_step=2)
    with pytest.raises(RuntimeError, match="power cut"):
        train(load_recipe(recipe))
    run_dir = only_run_dir(tmp_path)
    before = _rows(run_dir)
    assert {"zero_shot", "few_shot"} <= set(before[0]) and "fine_tuned" not in before[0]

    monkeypatch.undo()
    train(load_recipe(recipe), resume=run_dir)
    after = _rows(run_dir)
    assert [r["zero_shot"] for r in after] == [r["zero_shot"] for r in before]
    assert [r["few_shot"] for r in after] == [r["few_shot"] for r in before]
    assert all(isinstance(r["fine_tuned"], str) for r in after)


def test_generative_metrics_are_for_sft(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", eval={"metrics": ["rouge"]})
    with pytest.raises(RecipeError, match=r"eval\.metrics: generated answers are scored for task sft"):
        load_recipe(recipe)


def test_eval_command_keeps_its_answers_beside_the_scores(
    run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    run_dir, recipe, _ = run
    test_file = yaml.safe_load(recipe.read_text())["data"]["test"]
    out = tmp_path / "scores.json"
    result = runner.invoke(
        app, ["eval", str(run_dir), "--data", test_file, "--metrics", "exact_match", "--max-new-tokens", "6",
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in out.with_suffix(".generations.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == ["ja."] * 3 and answers[0]["reference"] == "ja."
    assert json.loads(out.read_text())["metrics"]["eval_exact_match"] == 1.0
    assert "generations" not in json.loads(out.read_text())  # the answers are in their own file


def test_generate_asks_a_base_model_as_it_asks_a_run(
    run: tuple[Path, Path, str], tiny_llama: Path, tmp_path: Path
) -> None:
    # The base with the run's chat template saved into it: `tunelab generate` on it must give the
    # zero-shot answer the run recorded, and on the run the fine-tuned one.
    import shutil

    from transformers import AutoTokenizer

    run_dir, _, _ = run
    row = _rows(run_dir)[0]
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = load_trained(run_dir).tokenizer.chat_template
    tokenizer.save_pretrained(base)

    question = row["prompt"][-1]["content"]
    before = runner.invoke(app, ["generate", str(base), "--prompt", question, "--max-new-tokens", "6"])
    after = runner.invoke(app, ["generate", str(run_dir), "--prompt", question, "--max-new-tokens", "6"])
    assert before.exit_code == 0 and after.exit_code == 0, before.output + after.output
    assert before.stdout == f"{row['zero_shot']}\n" and after.stdout == f"{row['fine_tuned']}\n"
    # A typo is not taken for a model.
    missing = runner.invoke(app, ["generate", str(tmp_path / "nope"), "--prompt", "hi"])
    assert missing.exit_code == 1 and "model folder not found" in missing.output


def test_the_report_shows_answers_before_and_after(run: tuple[Path, Path, str]) -> None:
    import html

    run_dir, _, _ = run
    page = (run_dir / "report.html").read_text()
    section = page[
        page.index('<section id="examples">') : page.index(
            "</section>", page.index('<section id="examples">')
        )
    ]
    rows = _rows(run_dir)
    assert "not available" not in section
    assert section.count("<h3>") == 3  # all three test rows (EXAMPLES_SHOWN is 3)
    for row in rows:
        assert html.escape(row["zero_shot"]) in section and html.escape(row["fine_tuned"]) in section
