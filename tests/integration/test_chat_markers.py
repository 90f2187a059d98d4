"""A tokenizer with no chat template and no token for ChatML's markers: the markers are added as special
tokens and their embedding rows trained (full, LoRA family), or the recipe is refused (other methods).
Cut into word pieces instead, generation never stopped and `< | im _ end | >` leaked into answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from tests.conftest import CORPUS, make_recipe, only_run_dir, save_plain_llama, write_jsonl
from tunelab.cli import app
from tunelab.export import export_run
from tunelab.generation import end_of_turn_ids, stop_token_ids
from tunelab.inference import generate_text
from tunelab.models.restore import load_trained

runner = CliRunner()
MARKERS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """The markers of ChatML are not in its tokenizer (conftest.save_plain_llama)."""
    return save_plain_llama(tmp_path_factory.mktemp("plain") / "model", tiny_llama)


def _same_answer_chats(prompts: list[str]) -> list[dict]:
    """Chats whose answer is always "ja.": a model that learned them says it, then ends the turn."""
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "ja."}]}
        for p in prompts
    ]


def _adapter_keys(run_dir: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(run_dir / "final" / "adapter_model.safetensors"), "pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def test_missing_chat_markers_are_added_as_tokens_whose_rows_lora_trains(
    tmp_path: Path, plain_model: Path
) -> None:
    recipe = make_recipe(tmp_path, plain_model, "sft", train={"max_steps": 2})
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    assert (
        "chat template chatml: the tokenizer had no token for <|im_start|>, <|im_end|>; added as special "
        "tokens (vocabulary now 302)" in " ".join(result.output.split())
    )
    run_dir = only_run_dir(tmp_path)
    trained = load_trained(run_dir)
    tokenizer = trained.tokenizer
    assert trained.model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 302  # the base grew
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"] == [im_end] == [301]
    assert end_of_turn_ids(tokenizer) == [im_end]
    assert im_end in stop_token_ids(tokenizer, trained.model.generation_config)
    # The loss covers the end-of-turn marker as one token: the model learns to end its answers.
    (cached,) = (tmp_path / "runs" / ".cache" / "data").glob("*/prepared.json")
    example = json.loads(cached.read_text())["splits"]["train"][0]
    assert im_end in example["labels"]
    # The adapter holds the new tokens' trained rows, input side and (the head is untied) output side.
    rows = {k: v for k, v in _adapter_keys(run_dir).items() if "trainable_tokens" in k}
    assert sorted(rows.values()) == [(2, 32), (2, 32)]
    assert any("embed_tokens" in k for k in rows) and any("lm_head" in k for k in rows)

    # The adapter export's model card code runs in plain transformers + peft: it grows the base first.
    out = export_run(run_dir, tmp_path / "export", merge=False)
    card = (out / "README.md").read_text()
    assert "base.resize_token_embeddings(len(tokenizer))" in card
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace("FOLDER", str(out))
    scope: dict = {}
    exec(code.replace("max_new_tokens=128", "max_new_tokens=3"), scope)  # the card the export wrote
    assert scope["model"].get_input_embeddings().weight.shape[0] == 302

    # Merged, the trained rows are folded into a 302-row model that computes what the adapter did.
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(export_run(run_dir, tmp_path / "merged", merge=True))
    ids = torch.tensor([tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained.model(ids).logits, atol=1e-5)

    # A second run reads the tokens from the data cache: the same markers are added again, same ids.
    again = runner.invoke(app, ["train", str(recipe), "--set", "train.max_steps=1"])
    assert again.exit_code == 0, again.output
    assert "read from the cache" in again.output


def test_added_end_of_turn_token_is_learned_and_generation_stops_on_it(
    tmp_path: Path, plain_model: Path
) -> None:
    train = write_jsonl(tmp_path / "chats.jsonl", _same_answer_chats(CORPUS[:6]))
    val = write_jsonl(tmp_path / "val.jsonl", _same_answer_chats(CORPUS[6:]))
    recipe = make_recipe(
        tmp_path,
        plain_model,
        "sft",
        data={"train": str(train), "validation": str(val)},
        method={"name": "full"},
        train={
            "epochs": 30,
            "batch_size": 4,
            "grad_accum": 1,
            "lr": 1e-2,
            "eval_every": 1000,
            "save_every": 1000,
        },
        eval={"baselines": []},
    )
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    trained = load_trained(only_run_dir(tmp_path))
    assert trained.model.get_input_embeddings().num_embeddings == 302
    # Stopped at <|im_end|>, with nothing of the marker in the text.
    assert generate_text(trained, "hello", max_new_tokens=20) == "ja."


def test_methods_that_cannot_train_new_tokens_are_refused_before_any_work(
    tmp_path: Path, plain_model: Path
) -> None:
    recipe = make_recipe(tmp_path, plain_model, "sft", method={"name": "ia3"})
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert (
        "the tokenizer has no token for <|im_start|>, <|im_end|>, which the chatml chat template writes "
        "around turns; they would have to be added as new tokens, and method ia3 cannot train new tokens' "
        "embeddings" in text
    )
    assert "fix: set data.template: alpaca" in text and "use method full or lora or dora or qlora" in text
    assert not (tmp_path / "runs").exists()
    alpaca = runner.invoke(
        app, ["train", str(recipe), "--set", "data.template=alpaca", "--set", "train.max_steps=1"]
    )
    assert alpaca.exit_code == 0, alpaca.output
