"""Bad input: a short error naming the problem and the fix, exit 1, no traceback, no completed run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import make_recipe
from tunelab.cli import app

runner = CliRunner()


def completed_runs(tmp_path: Path) -> list[Path]:
    return [
        p for p in tmp_path.rglob("summary.json") if json.loads(p.read_text()).get("status") == "completed"
    ]


def invoke(*args: str):
    return runner.invoke(app, list(args))


CASES = {
    "missing data file": (["--set", "data.train=missing.jsonl"], ["data.train: file not found", "fix:"]),
    "unknown recipe key": (["--set", "train.epoch=3"], ["train.epoch: unknown key (did you mean 'epochs'?)"]),
    "model path that does not exist": (
        ["--set", "model.name=./models/nope"],
        ["model folder not found", "models/nope", "fix:"],
    ),
    "hub id not reachable offline": (
        ["--set", "model.name=nobody/no-such-model"],
        ["model 'nobody/no-such-model' is not in the local Hugging Face cache", "HF_HUB_OFFLINE=1", "fix:"],
    ),
    "label column that does not exist": (
        ["--set", "data.label_column=intent"],
        ["no column 'intent'", "set data.label_column", "fix:"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_with_a_short_error(case: str, tmp_path: Path, tiny_bert: Path) -> None:
    overrides, expected = CASES[case]
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    result = invoke("train", str(recipe), *overrides)
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 6  # short
    assert completed_runs(tmp_path) == []
    assert not (tmp_path / "runs").exists()  # input errors are caught before the run folder is made


def test_a_data_file_that_is_not_json(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    (tmp_path / "train.jsonl").write_text("text,label\nhello,greeting\nbye,farewell\n", encoding="utf-8")
    result = invoke("train", str(recipe))
    assert result.exit_code == 1
    assert "train.jsonl: no line of this file is a JSON object" in result.output
    assert "fix:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    result = invoke("train", str(recipe), "--set", "model.name=./nope", "--debug")
    assert result.exit_code == 1
    assert result.exception is not None and "model folder not found" in str(result.exception)


def test_sft_where_no_assistant_token_survives_truncation_stops_before_training(
    tmp_path: Path, tiny_llama: Path
) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"max_seq_len": 6})
    result = invoke("train", str(recipe))
    assert result.exit_code == 1
    assert "no example keeps a single assistant token" in result.output
    assert "max_seq_len=6" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_template_that_drops_assistant_turns_stops_before_training(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from transformers import AutoTokenizer

    model_dir = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_llama, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] + '\n' }}{% endif %}{% endfor %}"
    tokenizer.save_pretrained(model_dir)
    recipe = make_recipe(tmp_path, model_dir, "sft")
    result = invoke("train", str(recipe))
    assert result.exit_code == 1
    assert "no example keeps a single assistant token" in result.output


def test_train_prints_before_and_after_and_the_run_folder(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", method={"name": "full"})
    result = invoke("train", str(recipe), "--set", f"data.test={tmp_path / 'val.jsonl'}")
    assert result.exit_code == 0, result.output
    assert "test_accuracy: " in result.output and " before training -> " in result.output
    assert "run folder: " in result.output
    assert "parameters: 35,267 trainable / 35,267 total (100.00%)" in result.output
    assert f"run folder: {tmp_path / 'runs'}" in result.output


@pytest.mark.parametrize("command", ["validate", "plan", "train"])
def test_max_seq_len_beyond_the_models_positions_is_refused_before_any_work(
    command: str, tmp_path: Path, tiny_bert: Path
) -> None:
    # The tiny BERT has 128 positions; past them its forward pass fails with a raw tensor-size error.
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_seq_len": 1024})
    result = invoke(command, str(recipe))
    assert result.exit_code == 1, result.output
    assert f"train.max_seq_len: 1024 is more than {tiny_bert} has positions for (128)" in result.output
    assert "fix: set train.max_seq_len to 128 or less (--set train.max_seq_len=128)" in result.output
    assert "bug in tunelab" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_virtual_tokens_count_against_the_models_positions(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(
        tmp_path,
        tiny_bert,
        "classify",
        method={"name": "prefix", "num_virtual_tokens": 4},
        train={"max_seq_len": 126},
    )
    result = invoke("validate", str(recipe))
    assert result.exit_code == 1
    assert "train.max_seq_len: 126 plus 4 virtual tokens is more than" in result.output
    assert "set train.max_seq_len to 124 or less" in result.output


@pytest.mark.parametrize("task", ["classify", "sft"])
def test_a_leakage_check_that_empties_train_says_so(
    task: str, tmp_path: Path, tiny_bert: Path, tiny_llama: Path
) -> None:
    # The validation file is the training file: every train row duplicates a held-out one.
    recipe = make_recipe(tmp_path, tiny_bert if task == "classify" else tiny_llama, task)
    result = invoke("train", str(recipe), "--set", f"data.validation={tmp_path / 'train.jsonl'}")
    assert result.exit_code == 1, result.output
    assert "train: no rows left: the leakage check removed all 8 remaining row(s)" in result.output
    assert "exact-duplicates" in result.output and "data.near_dedup.threshold" in result.output
    assert "bug in tunelab" not in result.output and "StopIteration" not in result.output
    assert not (tmp_path / "runs").exists()


def test_an_encoder_decoder_for_sft_is_named_as_such(tmp_path: Path, tiny_llama: Path) -> None:
    # A T5 folder is complete; the old message told the user to check it for config.json.
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(
        T5Config(num_layers=1, d_model=8, d_ff=8, num_heads=1, d_kv=8, vocab_size=400)
    ).save_pretrained(t5)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_llama / name).is_file():
            (t5 / name).write_bytes((tiny_llama / name).read_bytes())
    recipe = make_recipe(tmp_path, t5, "sft")
    result = invoke("train", str(recipe))
    assert result.exit_code == 1, result.output
    assert f"model {t5}: a T5 model cannot be loaded as a causal language model" in result.output
    assert "an encoder-decoder such as T5 or BART trains with task: seq2seq" in " ".join(
        result.output.split()
    )
    assert "needs config.json" not in result.output


def test_validate_runs_the_data_checks_and_says_what_it_did_not_run(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    ok = invoke("validate", str(recipe))
    assert ok.exit_code == 0, ok.output
    assert "checked: the recipe; the data (train 8, validation 4 rows" in ok.output
    assert "not checked here: tokenisation and the chat template, loading the weights, memory" in ok.output
    # What train would refuse, validate refuses too: a bad row, a model folder that is not there.
    with (tmp_path / "train.jsonl").open("a") as handle:
        handle.write('{"text": "no label here"}\n')
    bad_row = invoke("validate", str(recipe))
    assert bad_row.exit_code == 1 and "train.jsonl:9:" in bad_row.output
    missing = invoke("validate", str(recipe), "--set", f"model.name={tmp_path / 'nope'}")
    assert missing.exit_code == 1 and "model folder not found" in missing.output


def test_validate_and_train_name_a_model_path_that_is_a_file(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    weights = tiny_bert / "model.safetensors"
    for command in ("validate", "train"):
        result = invoke(command, str(recipe), "--set", f"model.name={weights}")
        assert result.exit_code == 1, result.output
        assert f"model.name {weights} is a file, not a model folder" in result.output
        assert f"point model.name at the folder that holds it ({tiny_bert})" in " ".join(
            result.output.split()
        )
        assert "not found" not in result.output
    assert not (tmp_path / "runs").exists()


def test_validate_and_train_name_a_damaged_weights_file(tmp_path: Path, tiny_bert: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # an interrupted download
    recipe = make_recipe(tmp_path, model, "classify")
    for command in ("validate", "train"):
        result = invoke(command, str(recipe))
        text = " ".join(result.output.split())
        assert result.exit_code == 1, result.output
        assert f"{weights} cannot be read: Error while deserializing header" in text
        assert "The file is damaged or incomplete (5,000 bytes)" in text
        assert "copy or download the model again" in text
        assert "bug in tunelab" not in text
    assert not (tmp_path / "runs").exists()


def test_validate_refuses_a_hub_id_that_is_not_cached_while_offline(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    result = invoke("validate", str(recipe), "--set", "model.name=nobody/no-such-model")
    assert result.exit_code == 1, result.output
    assert "model 'nobody/no-such-model' is not in the local Hugging Face cache" in result.output
    assert "ok" not in result.output.split()


def test_validate_prints_the_data_warnings(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    (tmp_path / "test.jsonl").write_text('{"text": "balance now", "label": "balance"}\n', encoding="utf-8")
    result = invoke("validate", str(recipe), "--set", f"data.test={tmp_path / 'test.jsonl'}")
    assert result.exit_code == 0, result.output
    assert "note: test: 2 of the 3 training classes never occur" in result.output
