"""task: seq2seq: tiny T5 and BART models (built from configs, saved, loaded by the real code) train with
LoRA `target_modules: auto`, score generated answers with BLEU, chrF and ROUGE beside the base model,
export merged weights that plain transformers loads with the run's logits, and predict a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import make_recipe, write_jsonl
from tunelab.cli import app
from tunelab.config import ModelConfig, load_recipe
from tunelab.data.records import Chat, Message
from tunelab.data.seq2seq import collate_seq2seq, tokenize_seq2seq
from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy
from tunelab.errors import DataError, ModelLoadError
from tunelab.models.load import load_model
from tunelab.runner import train
from tunelab.training.objectives import SEQ2SEQ_OBJECTIVE

runner = CliRunner()
WORDS = ["red", "blue", "green", "black", "white", "small", "big", "old", "new", "fast"]
HELD_OUT = ["card", "order", "money", "dog", "fox"]
# A toy translation: "say X" -> "X X" (the word twice).
PAIRS = [{"en": f"say {w}", "de": f"{w} {w}"} for w in WORDS]
HELD_OUT_PAIRS = [{"en": f"say {w}", "de": f"{w} {w}"} for w in HELD_OUT]
PROMPT = "Repeat: {en}"


def _pairs(model: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    chats = [
        Chat((Message("user", p["en"]), Message("assistant", p["de"])), f"t:{i}") for i, p in enumerate(PAIRS)
    ]
    examples, _ = tokenize_seq2seq(tokenizer, chats, LengthPolicy(max_seq_len=32))
    return collate_seq2seq(examples, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def tiny_marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import save_tiny_marian

    return save_tiny_marian(tmp_path_factory.mktemp("tiny-marian"))


@pytest.mark.parametrize("family", ["t5", "bart", "marian"])
def test_the_loss_is_the_models_own_teacher_forced_loss(family: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(f"tiny_{family}")
    loaded = load_model(ModelConfig(name=str(folder)), "seq2seq", dtype=torch.float32)
    batch = _pairs(loaded.model, loaded.tokenizer)
    objective = SEQ2SEQ_OBJECTIVE
    with torch.no_grad():
        ours = objective.loss(loaded.model, batch).loss_sum / objective.count_targets(batch)
        # transformers shifts the labels itself when given them: the same mean cross-entropy.
        theirs = loaded.model(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    # Targets end with EOS (padded with IGNORE_INDEX to their own width: collate_seq2seq).
    eos = loaded.tokenizer.eos_token_id
    for row in batch["labels"].tolist():
        kept = [t for t in row if t != IGNORE_INDEX]
        assert kept[-1] == eos


def _recipe(root: Path, folder: Path, steps: int = 20, **sections: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "train": str(write_jsonl(root / "pairs.jsonl", PAIRS * 3)),
        "validation": str(write_jsonl(root / "pairs-val.jsonl", HELD_OUT_PAIRS[:2])),
        "test": str(write_jsonl(root / "pairs-test.jsonl", HELD_OUT_PAIRS[2:])),
        "columns": {"completion": "de"},
        "prompt_template": PROMPT,
        "dedup": False,  # the repeats are the point: three epochs' worth of the ten pairs per pass
    }
    train_section = {
        "max_steps": steps,
        "epochs": 10,
        "lr": 3e-2,
        "batch_size": 5,
        "grad_accum": 1,
        "eval_every": steps,
    }
    sections.setdefault("method", {"name": "lora", "r": 8, "alpha": 16, "target_modules": "auto"})
    return make_recipe(
        root, folder, "seq2seq", data=data, train=train_section,
        eval={"metrics": ["bleu", "chrf", "rouge", "exact_match"], "max_new_tokens": 8},
        **sections,
    )  # fmt: skip


@pytest.fixture(scope="module")
def t5_run(tiny_t5: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("seq2seq") / "t5"
    return train(load_recipe(_recipe(root, tiny_t5)))


def test_a_t5_lora_run_trains_scores_and_records_its_answers(t5_run: Any, tiny_t5: Path) -> None:
    from safetensors.torch import load_file

    summary = t5_run.summary
    assert summary.status == "completed" and summary.task == "seq2seq"
    assert summary.metrics["test_loss"] < summary.before_training["test_loss"]
    for name in ("test_bleu", "test_chrf", "test_rougeL", "test_exact_match"):
        assert name in summary.metrics and name in summary.baselines["zero_shot"]
    assert summary.baselines["zero_shot"]["note"] == "few-shot is not scored for an encoder-decoder"
    rows = [json.loads(line) for line in (t5_run.run_dir / "generations.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == [p["de"] for p in HELD_OUT_PAIRS[2:]]
    assert {"zero_shot", "fine_tuned"} <= set(rows[0]) and "few_shot" not in rows[0]
    # LoRA found T5's attention and feed-forward projections by itself (target_modules: auto), and
    # only adapter weights were saved: the base's own file is untouched.
    adapter = json.loads((t5_run.run_dir / "final" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM"
    assert {"q", "k", "v", "o", "wi", "wo"} <= set(adapter["target_modules"])
    saved = load_file(str(t5_run.run_dir / "final" / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    # With the adapter off, the trained model is the base exactly: no base weight moved.
    from tunelab.models.restore import load_trained

    trained = load_trained(t5_run.run_dir, precision="fp32")
    base = load_model(ModelConfig(name=str(tiny_t5)), "seq2seq", dtype=torch.float32).model.eval()
    batch = _pairs(base, trained.tokenizer)
    with torch.no_grad(), trained.model.disable_adapter():
        torch.testing.assert_close(trained.model(**batch).logits, base(**batch).logits, rtol=0, atol=0)


def test_a_merged_t5_export_loads_in_transformers_and_predict_answers_as_generate_does(
    t5_run: Any, tmp_path: Path
) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from tunelab.export import export_run
    from tunelab.models.restore import load_trained

    out = export_run(t5_run.run_dir, tmp_path / "merged", merge=True)
    trained = load_trained(t5_run.run_dir, precision="fp32")
    merged = AutoModelForSeq2SeqLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = _pairs(merged, tokenizer)
    with torch.no_grad():
        ours = trained.model(**batch).logits
        theirs = merged(**batch).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text2text-generation" in card
    code = card.split("```python\n")[1].split("```")[0].replace("FOLDER", str(out))
    exec(code, {})  # the card's own code runs as written: load, encode the prompt, generate, decode
    assert "AutoModelForSeq2SeqLM" in code and f"PROMPT = {PROMPT!r}" in code

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"en": p["en"], "id": i} for i, p in enumerate(PAIRS[:3])])
    predictions = tmp_path / "predictions.jsonl"
    args = ["--data", str(rows), "--out", str(predictions), "--max-new-tokens", "16"]
    result = runner.invoke(app, ["predict", str(out), *args])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in predictions.read_text().splitlines()]
    # What plain transformers generates from the prompt training wrote: the same answers.
    for row, pair in zip(got, PAIRS[:3], strict=True):
        ids = tokenizer(PROMPT.format(en=pair["en"]), return_tensors="pt")
        output = merged.generate(**ids, max_new_tokens=16, do_sample=False)
        assert row["pred_answer"] == tokenizer.decode(output[0], skip_special_tokens=True).strip()
    assert [row["id"] for row in got] == [0, 1, 2]


def test_bart_trains_with_lora_auto_and_generate_works_on_the_run(tiny_bart: Path, tmp_path: Path) -> None:
    run = train(load_recipe(_recipe(tmp_path / "bart", tiny_bart, steps=10)))
    assert run.summary.metrics["test_loss"] < run.summary.before_training["test_loss"]
    adapter = json.loads((run.run_dir / "final" / "adapter_config.json").read_text())
    assert {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"} <= set(adapter["target_modules"])
    result = runner.invoke(
        app, ["generate", str(run.run_dir), "--prompt", "say red", "--max-new-tokens", "4"]
    )
    assert result.exit_code == 0, result.output


def test_a_row_with_several_turns_is_refused_by_its_location(tmp_path: Path, tiny_t5: Path) -> None:
    tokenizer = load_model(ModelConfig(name=str(tiny_t5)), "seq2seq").tokenizer
    chat = Chat(
        (Message("user", "a"), Message("assistant", "b"), Message("user", "c"), Message("assistant", "d")),
        "data.jsonl:7",
    )
    with pytest.raises(DataError, match=r"data.jsonl:7: a seq2seq row is one source and one target"):
        tokenize_seq2seq(tokenizer, [chat], LengthPolicy(max_seq_len=32))


def test_the_wrong_architecture_for_the_task_says_which_task_fits(tiny_t5: Path, tiny_llama: Path) -> None:
    with pytest.raises(ModelLoadError, match="trains with task: seq2seq"):
        load_model(ModelConfig(name=str(tiny_t5)), "sft")
    with pytest.raises(ModelLoadError, match="learns prompt -> completion with task: sft"):
        load_model(ModelConfig(name=str(tiny_llama)), "seq2seq")


def test_eval_scores_a_seq2seq_run_on_a_file_as_training_scored_its_test_split(
    t5_run: Any, tmp_path: Path
) -> None:
    test_file = t5_run.run_dir.parent.parent / "pairs-test.jsonl"
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        [
            "eval",
            str(t5_run.run_dir),
            "--data",
            str(test_file),
            "--metrics",
            "bleu,chrf",
            "--out",
            str(out),
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    scored = json.loads(out.read_text())
    metrics, summary = scored["metrics"], t5_run.summary.metrics
    assert metrics["eval_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert metrics["eval_chrf"] == pytest.approx(summary["test_chrf"], rel=1e-6)


def test_sources_and_targets_are_padded_to_their_own_widths() -> None:
    batch = collate_seq2seq(
        [{"input_ids": [5, 6, 7], "labels": [8]}, {"input_ids": [5], "labels": [8, 9, 3]}], 0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[8, IGNORE_INDEX, IGNORE_INDEX], [8, 9, 3]]


def test_a_target_always_ends_with_eos_even_when_cut() -> None:
    from tests.conftest import build_tokenizer
    from tunelab.data.seq2seq import target_ids

    tokenizer = build_tokenizer()  # adds no special tokens of its own
    eos = tokenizer.eos_token_id
    plain = tokenizer("lost my card")["input_ids"]
    assert target_ids(tokenizer, "lost my card") == [*plain, eos]
    cut = target_ids(tokenizer, "lost my card", max_len=3)
    assert cut == [*plain[:2], eos]
