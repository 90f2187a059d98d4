"""The recipe contract: every problem at once, with its YAML path; every shipped recipe validates."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import REPO, write_jsonl
from tunelab.cli import app
from tunelab.config import EarlyStopping, Recipe, load_recipe
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


def recipes_named_in(text: str) -> set[str]:
    """The recipes/...yaml paths a text names; a brace list (`{fsdp,deepspeed-zero2}.yaml`) names each."""
    named = set()
    for path in re.findall(r"recipes/[\w./{},-]+?\.yaml", text):
        head, brace, tail = path.partition("{")
        options, _, rest = tail.partition("}")
        named |= {head + option + rest for option in options.split(",")} if brace else {path}
    return named


def test_every_recipe_the_docs_and_scripts_name_is_shipped() -> None:
    # What users are pointed at: README, docs, the Makefile's targets and the bench scripts.
    documents = [REPO / "README.md", REPO / "Makefile", *REPO.glob("docs/**/*.md"),
                 *REPO.glob("bench/**/*.md"), *REPO.glob("bench/**/*.py")]  # fmt: skip
    named = {path for doc in documents for path in recipes_named_in(doc.read_text(encoding="utf-8"))}
    assert recipes_named_in("see recipes/accelerate/{fsdp,deepspeed-zero3}.yaml or recipes/a.yaml,") == {
        "recipes/accelerate/fsdp.yaml",
        "recipes/accelerate/deepspeed-zero3.yaml",
        "recipes/a.yaml",
    }
    # The scan finds what it should: `make quickstart`'s two recipes, named in the Makefile.
    assert {"recipes/quickstart-contacts-lora.yaml", "recipes/quickstart-intent-lora.yaml"} <= named
    assert sorted(path for path in named if not (REPO / path).is_file()) == []


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
        "train.early_stopping.metric: the validation pass of task sft logs no val_accuracy; watch one of "
        "val_loss, val_perplexity" in text
    )
    assert "preference.beta: applies to task: preference only" in text
    assert (
        "train.packing: method prefix prepends virtual tokens, which peft cannot combine with packed rows"
        in text
    )


# ---------------------------------------------------------------------------------------------
# Early stopping: any metric the task's validation pass logs (config/validation_metrics.py)


def early_stopping_recipe(good: dict, task: str, metric: str, **sections: Any) -> dict:
    good["task"] = task
    good["data"]["validation"] = good["data"]["train"]
    good["train"] = {"early_stopping": {"metric": metric}, **sections.pop("train", {})}
    good.update(sections)
    return good


@pytest.mark.parametrize(
    ("task", "metric", "sections"),
    [
        ("token_classify", "val_accuracy", {}),  # the accuracy over tagged words
        ("token_classify", "val_entity_f1", {}),  # from the predicted spans, at every validation pass
        ("sft", "val_rougeL", {"eval": {"metrics": ["rouge"]}}),  # answers generated at each pass
        ("seq2seq", "val_exact_match", {"eval": {"metrics": ["exact_match"]}}),
        ("reward", "val_reward_margin", {}),
        ("reward", "val_reward_accuracy", {}),
        ("preference", "val_reward_accuracy", {"preference": {"objective": "kto"}}),
        ("sft", "val_perplexity", {}),
    ],
)
def test_early_stopping_watches_any_metric_the_validation_pass_logs(
    tmp_path: Path, good: dict, task: str, metric: str, sections: dict
) -> None:
    recipe = load_recipe(write_recipe(tmp_path, early_stopping_recipe(good, task, metric, **sections)))
    assert recipe.train.early_stopping is not None and recipe.train.early_stopping.metric == metric


@pytest.mark.parametrize(
    ("task", "metric", "sections", "message"),
    [
        (
            "classify",
            "val_macro_f1",
            {},
            "val_macro_f1 is not logged at validation passes: classify's per-class report is computed once, "
            "after training; watch one of val_loss, val_accuracy",
        ),
        (
            "sft",
            "val_rougeL",
            {"eval": {"metrics": ["exact_match"]}},
            "val_rougeL scores generated answers: add rouge to eval.metrics (each validation pass then "
            "generates answers to the validation split); or watch one of val_loss, val_perplexity, "
            "val_exact_match",
        ),
        (
            "sft",
            "val_rougeL",
            {"eval": {"metrics": ["rouge"]}, "train": {"distributed": "fsdp"}},
            "val_rougeL scores answers generated at each validation pass, which needs whole weights on each "
            "process; train.distributed fsdp shards them. Watch one of val_loss, val_perplexity",
        ),
        (
            "preference",
            "val_reward_chosen",
            {},
            "val_reward_chosen is a diagnostic with no direction that means better; watch one of val_loss, "
            "val_reward_accuracy, val_reward_margin",
        ),
        (
            "preference",
            "val_kl",
            {"preference": {"objective": "dpo"}},
            "the validation pass of task preference (objective dpo) logs no val_kl; watch one of val_loss, "
            "val_reward_accuracy, val_reward_margin",
        ),
        (
            "classify",
            "test_accuracy",
            {},
            "the validation pass of task classify logs no test_accuracy; watch one of val_loss, val_accuracy",
        ),
    ],
)
def test_an_early_stopping_metric_the_validation_pass_lacks_is_refused_saying_why(
    tmp_path: Path, good: dict, task: str, metric: str, sections: dict, message: str
) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, early_stopping_recipe(good, task, metric, **sections)))
    assert caught.value.problems == [f"train.early_stopping.metric: {message}"]


def test_a_multi_dataset_run_can_watch_a_dataset_with_validation_rows_of_its_own(
    tmp_path: Path, good: dict
) -> None:
    rows = good["data"]["train"]
    good["data"] = {
        "train": [{"path": rows, "name": "chat", "validation": rows}, {"path": rows, "name": "faq"}]
    }
    good.update(task="sft", train={"early_stopping": {"metric": "val_chat_loss"}})
    watched = load_recipe(write_recipe(tmp_path, good)).train.early_stopping
    assert watched == EarlyStopping(metric="val_chat_loss", patience=3, min_delta=0.0)
    good["train"] = {"early_stopping": {"metric": "val_faq_loss"}}  # faq has no validation rows
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, good))
    assert caught.value.problems == [
        "train.early_stopping.metric: the validation pass of task sft logs no val_faq_loss; watch one of "
        "val_loss, val_perplexity, val_chat_loss, val_chat_perplexity"
    ]


def test_early_stopping_can_watch_a_validation_share_of_train(tmp_path: Path, good: dict) -> None:
    good["data"]["split"] = {"validation": 0.25}
    good["train"] = {"early_stopping": {"metric": "val_accuracy"}}
    watched = load_recipe(write_recipe(tmp_path, good)).train.early_stopping
    assert watched == EarlyStopping(metric="val_accuracy", patience=3, min_delta=0.0)


def test_each_metrics_direction_comes_from_one_table() -> None:
    higher = {
        metric: EarlyStopping(metric=metric).higher_is_better
        for metric in ("val_loss", "val_perplexity", "val_chat_loss", "val_accuracy", "val_reward_margin")
    }
    assert higher == {
        "val_loss": False,
        "val_perplexity": False,
        "val_chat_loss": False,  # a dataset's own loss
        "val_accuracy": True,
        "val_reward_margin": True,  # higher is better, though it is no accuracy
    }


# ---------------------------------------------------------------------------------------------
# target_modules: all-linear, peft's spelling


def adapted_layers(tmp_path: Path, model_dir: Path, method: dict) -> tuple[Any, set[str], set[str], Any]:
    """(the method's settings as read, the base's linear layers but the head, the layers it adapted, the
    model it built)."""
    import torch

    from tests.conftest import make_recipe
    from tunelab.models.load import load_model
    from tunelab.models.methods import apply_method

    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(make_recipe(tmp_path, model_dir, "sft", method=method))
    loaded = load_model(recipe.model, recipe.task)
    head = loaded.model.get_output_embeddings()
    linear = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    model = apply_method(loaded.model, recipe.method, recipe.task, loaded.new_modules)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    marker = {"lora": ".lora_A.", "dora": ".lora_A.", "ia3": ".ia3_l."}[method["name"]]
    adapted = {n.split(marker)[0].removeprefix("base_model.model.") for n in trainable if marker in n}
    assert all(marker in n or "magnitude" in n or "lora_B" in n for n in trainable)  # adapter weights only
    return recipe.method, linear, adapted, model


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_all_linear_is_read_as_auto(tmp_path: Path, tiny_llama: Path, name: str) -> None:
    method = {"name": name, "r": 4, "alpha": 8}
    spelled, linear, adapted, _ = adapted_layers(
        tmp_path / "a", tiny_llama, {**method, "target_modules": "all-linear"}
    )
    _, _, auto, _ = adapted_layers(tmp_path / "b", tiny_llama, {**method, "target_modules": "auto"})
    assert spelled.target_modules == "auto"
    assert adapted == auto == linear  # every linear layer but the output head, as auto


def test_ia3_all_linear_rescales_every_linear_layer_as_peft_does(tmp_path: Path, tiny_llama: Path) -> None:
    # ia3's auto is peft's table (keys, values, the MLP output); all-linear keeps peft's own meaning.
    spelled, linear, adapted, model = adapted_layers(
        tmp_path / "a", tiny_llama, {"name": "ia3", "target_modules": "all-linear"}
    )
    _, _, auto, _ = adapted_layers(tmp_path / "b", tiny_llama, {"name": "ia3"})
    assert spelled.target_modules == "all-linear"
    assert adapted == linear
    # feedforward_modules: auto is peft's table's MLP layers, whose input is rescaled.
    rescaled_inputs = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if getattr(m, "is_feedforward", False)
    }
    assert rescaled_inputs == {"down_proj"}
    assert {n.rsplit(".", 1)[-1] for n in auto} == {"k_proj", "v_proj", "down_proj"}


def test_a_misspelt_all_linear_names_both_spellings(tmp_path: Path, good: dict) -> None:
    good["method"] = {"name": "lora", "target_modules": "all_linear"}
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, good))
    assert caught.value.problems == [
        "method.target_modules: must be one of 'auto' or 'all-linear', got 'all_linear'"
    ]


def test_a_method_name_that_is_not_a_string_is_an_unknown_method(tmp_path: Path, good: dict) -> None:
    good["method"] = {"name": ["lora"]}
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, good))
    assert "method: unknown method ['lora']; must be one of full, freeze, lora" in str(caught.value)


def test_model_hub_id_must_look_like_a_hub_id(tmp_path: Path, good: dict) -> None:
    good["model"]["hub_id"] = "./models/base"
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(tmp_path, good))
    (problem,) = caught.value.problems  # the one mistake, named with the value given
    assert (
        problem
        == "model.hub_id: must match the pattern ^[A-Za-z0-9][\\w.-]*(/[\\w.-]+)?$, got './models/base'"
    )
    good["model"]["hub_id"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert load_recipe(write_recipe(tmp_path, good)).model.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
