"""The recipe contract: every problem at once, with its YAML path; every shipped recipe validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, write_jsonl
from tunelab.cli import app
from tunelab.config import Recipe, load_recipe
from tunelab.errors import RecipeError

runner = CliRunner()


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture
def good(tmp_path: Path) -> dict:
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}])
    return {
        "name": "demo",
        "task": "classify",
        "model": {"name": "org/model"},
        "data": {"train": str(train)},
        "method": {"name": "lora"},
    }


def test_three_mistakes_are_all_reported_with_their_paths(tmp_path: Path, good: dict) -> None:
    good["train"] = {"lr": -1, "schedular": "cosine"}
    good["method"] = {"name": "lora", "r": 0}
    path = write_recipe(tmp_path, good)

    # The real entry point, as a user runs it: exit 1, every problem, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", "validate", str(path)], capture_output=True, text=True, cwd=tmp_path
    )

    assert proc.returncode == 1
    assert "3 problems" in proc.stderr
    assert "train.lr: must be > 0, got -1" in proc.stderr
    assert "train.schedular: unknown key (did you mean 'scheduler'?)" in proc.stderr
    assert "method.r: must be > 0, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# Every shipped recipe is validated in tests/unit/test_recipes.py (qlora: refused without CUDA).


def test_shipped_recipes_exist() -> None:
    assert len(list((REPO / "recipes").glob("*.yaml"))) >= 2


def test_set_overrides_any_field_with_yaml_types(tmp_path: Path, good: dict) -> None:
    path = write_recipe(tmp_path, good)
    recipe = load_recipe(
        path, ["train.lr=1e-4", "train.max_steps=5", "method.target_modules=[q_proj, v_proj]"]
    )
    assert recipe.train.lr == pytest.approx(1e-4)
    assert recipe.train.max_steps == 5
    assert recipe.method.name == "lora" and recipe.method.target_modules == ["q_proj", "v_proj"]


def test_set_works_on_the_validate_command(tmp_path: Path, good: dict) -> None:
    path = write_recipe(tmp_path, good)
    result = runner.invoke(app, ["validate", str(path), "--set", "train.batch_size=-3"])
    assert result.exit_code == 1
    assert "train.batch_size: must be > 0, got -3" in result.output


def test_set_with_an_unknown_key_is_reported(tmp_path: Path, good: dict) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, good), ["train.learning_rate=1e-4"])
    assert "train.learning_rate: unknown key" in str(err.value)


def test_method_fields_are_checked_against_the_chosen_method(tmp_path: Path, good: dict) -> None:
    good["method"] = {"name": "freeze", "r": 8}
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, good))
    text = str(err.value)
    assert "method.k: required, but missing" in text
    assert "method.r: unknown key; allowed: name, k" in text


def test_unknown_method_and_task(tmp_path: Path, good: dict) -> None:
    good["method"] = {"name": "lroa"}
    good["task"] = "classification"
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, good))
    text = str(err.value)
    assert "method: unknown method 'lroa'; must be one of full, freeze, lora" in text
    assert (
        "task: must be one of 'sft', 'classify', 'pretrain', 'preference', 'reward', 'token_classify' or "
        "'seq2seq', got 'classification'" in text
    )


def test_missing_data_file_is_a_recipe_error_naming_the_path(tmp_path: Path, good: dict) -> None:
    good["data"]["validation"] = "nope/val.jsonl"
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path, good))
    assert "data.validation: file not found:" in str(err.value)
    assert "nope/val.jsonl" in str(err.value)


def test_early_stopping_needs_validation_data(tmp_path: Path, good: dict) -> None:
    good["train"] = {"early_stopping": {"metric": "val_loss", "patience": 2}}
    with pytest.raises(RecipeError, match=r"train\.early_stopping: needs data\.validation"):
        load_recipe(write_recipe(tmp_path, good))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: [sft\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and hasattr(arg, "model_fields"):
                    missing += walk(arg)
        return missing

    from tunelab.methods import method_names, method_spec

    assert walk(Recipe) == []
    assert [m for name in method_names() for m in walk(method_spec(name).config)] == []


def test_integer_label_names_in_label_descriptions_are_read_as_the_labels_they_name(good: dict) -> None:
    # YAML makes `0: very negative` an integer key; labels 0/1 are read from the data as "0"/"1".
    good["eval"] = {"label_descriptions": {0: "a negative review", 1: "a positive review"}}
    assert Recipe.model_validate(good).eval.label_descriptions == {
        "0": "a negative review",
        "1": "a positive review",
    }


def test_a_bad_dict_key_is_named_as_a_key_not_as_a_file_path(tmp_path: Path, good: dict) -> None:
    good["data"]["columns"] = {1: "question"}
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, good))
    message = str(caught.value)
    assert "data.columns[1]: the key 1 must be text: input should be a valid string" in message
    assert "file path" not in message


def test_every_cross_field_mistake_is_reported_in_one_pass(tmp_path: Path, good: dict) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    good.update(
        task="sft",
        method={"name": "prefix", "num_virtual_tokens": 4},
        preference={"beta": 0.1},  # a preference setting on an sft recipe
        train={
            "packing": True,
            "early_stopping": {"metric": "val_accuracy"},
        },  # packing with prefix; a metric sft never logs
    )
    good["data"]["validation"] = good["data"]["train"]
    result = CliRunner().invoke(app, ["validate", str(write_recipe(tmp_path, good))])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "recipe.yaml: 3 problems" in text
    assert (
        "train.early_stopping.metric: task sft never logs val_accuracy (classify only); use val_loss" in text
    )
    assert "preference.beta: applies to task: preference only" in text
    assert (
        "train.packing: method prefix prepends virtual tokens, which peft cannot combine with packed rows"
        in text
    )
