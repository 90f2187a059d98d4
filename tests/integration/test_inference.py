"""Inference on trained runs and their exports: chat (streamed, in the training template), one-shot
generation, and file predictions for classifiers and generators.

The chat model is a tiny Llama overfit (full fine-tuning, 40 steps at lr 1e-2) on two short
conversations, so greedy decoding reproduces the trained answers exactly: on CPU in float32 the
weights and the greedy path are deterministic, so this is not a flaky check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from tests.conftest import make_recipe, write_jsonl
from tunelab.chat import chat_loop
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.data.records import Chat, Message
from tunelab.data.templates import ALPACA, CHATML, LLAMA3
from tunelab.data.tokenize import LengthPolicy, tokenize_chats
from tunelab.errors import DataError, TunelabError
from tunelab.export import export_run
from tunelab.generation import end_of_turn_ids
from tunelab.inference import generate_text, predict_file
from tunelab.models.restore import Trained, load_trained
from tunelab.runner import train

runner = CliRunner()

HELLO, HELLO_ANSWER = "Hello there!", "Good morning."
HOW, HOW_ANSWER = "How are you?", "Good, thank you!"
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": HELLO}, {"role": "assistant", "content": HELLO_ANSWER}]},
    {
        "messages": [
            {"role": "user", "content": HELLO},
            {"role": "assistant", "content": HELLO_ANSWER},
            {"role": "user", "content": HOW},
            {"role": "assistant", "content": HOW_ANSWER},
        ]
    },
]
# What chatml renders, written out by hand: the first turn's prompt, then the second's.
FIRST_PROMPT = f"<|im_start|>user\n{HELLO}<|im_end|>\n<|im_start|>assistant\n"
SECOND_PROMPT = (
    f"{FIRST_PROMPT}{HELLO_ANSWER}<|im_end|>\n<|im_start|>user\n{HOW}<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("chat-run")
    data = write_jsonl(root / "chats.jsonl", CONVERSATIONS)
    recipe = make_recipe(
        root, tiny_llama, "sft", method={"name": "full"}, data={"train": str(data), "validation": None},
        train={"max_steps": 40, "batch_size": 2, "grad_accum": 1, "lr": 1e-2, "scheduler": "constant",
               "eval_every": 1000, "save_every": 1000, "log_every": 10},
    )  # fmt: skip
    return train(load_recipe(recipe)).run_dir


@pytest.fixture(scope="module")
def chat_export(chat_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(chat_run, tmp_path_factory.mktemp("chat-export") / "model", merge=True)


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("predict-classify")
    recipe = make_recipe(root, tiny_bert, "classify", train={"max_steps": 3, "eval_every": 3})
    return train(load_recipe(recipe)).run_dir


def _record_generate_calls(trained: Trained, events: list[Any]) -> None:
    """Wrap model.generate to log its prompts and the moment it returns, among the streamed chunks."""
    real = trained.model.generate

    def spy(**kwargs: Any) -> Any:
        events.append(("prompt", kwargs["input_ids"][0].tolist()))
        result = real(**kwargs)
        events.append(("returned", None))
        return result

    trained.model.generate = spy


def _typed(*lines: str) -> Any:
    """An input function: these lines, then end of input (Ctrl-D), as `input` raises it."""
    pending = list(lines)

    def read(prompt: str) -> str:
        if not pending:
            raise EOFError
        return pending.pop(0)

    return read


def test_chat_streams_the_trained_answers_rendered_in_the_training_template(chat_export: Path) -> None:
    trained = load_trained(chat_export)  # the exported (merged) model, not the run
    events: list[Any] = []
    _record_generate_calls(trained, events)
    history = chat_loop(
        trained, _typed(HELLO, HOW, "/exit", "never read"), lambda text: events.append(("text", text))
    )

    assert history == [
        {"role": "user", "content": HELLO},
        {"role": "assistant", "content": HELLO_ANSWER},
        {"role": "user", "content": HOW},
        {"role": "assistant", "content": HOW_ANSWER},
    ]
    texts = [value for kind, value in events if kind == "text"]
    assert "".join(texts) == f"{HELLO_ANSWER}\n{HOW_ANSWER}\n"

    # The model saw exactly the chatml rendering of the history plus the generation prompt, encoded
    # without extra special tokens: the same ids training fed it for this conversation.
    prompts = [value for kind, value in events if kind == "prompt"]
    tokenizer = trained.tokenizer
    assert [tokenizer.decode(ids) for ids in prompts] == [FIRST_PROMPT, SECOND_PROMPT]
    chat = Chat(tuple(Message(m["role"], m["content"]) for m in CONVERSATIONS[1]["messages"]))
    (example,), _ = tokenize_chats(tokenizer, [chat], LengthPolicy(512))
    for ids in prompts:
        assert example["input_ids"][: len(ids)] == ids

    # Streamed: the first answer arrived in several pieces, all before generate returned.
    first_answer = events[1 : events.index(("returned", None))]
    assert len(first_answer) > 1 and all(kind == "text" for kind, _ in first_answer)
    assert "".join(text for _, text in first_answer) == HELLO_ANSWER


def test_chat_reset_forgets_the_history(chat_run: Path) -> None:
    trained = load_trained(chat_run)
    events: list[Any] = []
    _record_generate_calls(trained, events)
    history = chat_loop(trained, _typed(HELLO, "/reset", HELLO), lambda text: events.append(("text", text)))

    prompts = [trained.tokenizer.decode(value) for kind, value in events if kind == "prompt"]
    assert prompts == [FIRST_PROMPT, FIRST_PROMPT]
    assert ("text", "(history cleared)\n") in events
    assert history == [{"role": "user", "content": HELLO}, {"role": "assistant", "content": HELLO_ANSWER}]


def test_chat_command(chat_export: Path) -> None:
    result = runner.invoke(app, ["chat", str(chat_export)], input=f"{HELLO}\n{HOW}\n/exit\n")
    assert result.exit_code == 0, result.output
    assert f"you> {HELLO_ANSWER}\nyou> {HOW_ANSWER}\nyou> " in result.stdout


def test_generate_command_prints_the_answer(chat_run: Path) -> None:
    result = runner.invoke(app, ["generate", str(chat_run), "--prompt", HELLO, "--max-new-tokens", "20"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{HELLO_ANSWER}\n"


def test_exported_generation_config_stops_plain_generate_at_the_end_of_turn(chat_export: Path) -> None:
    # As the model card says to use it: plain transformers, no stop tokens passed.
    model = AutoModelForCausalLM.from_pretrained(chat_export)
    tokenizer = AutoTokenizer.from_pretrained(chat_export)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": HELLO}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = model.generate(**inputs, max_new_tokens=30, do_sample=False)
    new = output[0, inputs["input_ids"].shape[1] :].tolist()
    assert new[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # stopped there, not at 30 tokens
    assert tokenizer.decode(new, skip_special_tokens=True) == HELLO_ANSWER


def test_predict_a_generator_answers_each_prompt(chat_run: Path, tmp_path: Path) -> None:
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": HELLO}, {"role": "assistant", "content": "x"}]},
        {"prompt": HELLO},
        CONVERSATIONS[1] | {"id": 3},  # its last answer is left out and generated again
        {"instruction": HELLO},
    ]
    out = tmp_path / "preds" / "answers.jsonl"
    written = predict_file(
        load_trained(chat_run), write_jsonl(tmp_path / "in.jsonl", rows), out, batch_size=3
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == 4
    # Each row's own fields come first, as the file has them, then the prediction's (pred_*).
    answers = [HELLO_ANSWER, HELLO_ANSWER, HOW_ANSWER, HELLO_ANSWER]
    assert lines == [{**row, "pred_answer": answer} for row, answer in zip(rows, answers, strict=True)]


def test_predict_a_classifier_gives_labels_and_probabilities(classify_run: Path, tmp_path: Path) -> None:
    texts = ["what is my balance", "block my card please", "send 20 to Tom", "hello"]
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": t} for t in texts])
    trained = load_trained(classify_run)
    predict_file(trained, data, tmp_path / "b2.jsonl", batch_size=2)  # padded batches
    predict_file(trained, data, tmp_path / "b1.jsonl", batch_size=1)  # no padding at all
    batched = [json.loads(line) for line in (tmp_path / "b2.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (tmp_path / "b1.jsonl").read_text().splitlines()]

    assert len(batched) == len(texts)
    for row, alone in zip(batched, single, strict=True):
        probabilities = row["pred_probabilities"]
        assert list(probabilities) == ["balance", "card", "transfer"]
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["pred_label"] == max(probabilities, key=probabilities.__getitem__)
        assert alone["pred_probabilities"] == pytest.approx(probabilities, abs=1e-6)
    # The probabilities are the model's: a plain forward pass on one text gives the same numbers.
    with torch.no_grad():
        logits = trained.model(**trained.tokenizer(texts[1], return_tensors="pt")).logits[0]
    expected = dict(zip(["balance", "card", "transfer"], torch.softmax(logits, -1).tolist(), strict=True))
    assert batched[1]["pred_probabilities"] == pytest.approx(expected, abs=1e-6)


def test_predict_names_every_bad_row_and_writes_nothing(classify_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "my balance"}\n{"text": \n{"label": "card"}\n{"text": "   "}\n')
    out = tmp_path / "preds.jsonl"
    with pytest.raises(DataError) as error:
        predict_file(load_trained(classify_run), data, out)
    message = str(error.value)
    assert f"{data}: 3 bad row(s) out of 4" in message
    assert f"{data}:2: not valid JSON" in message
    # The reasons are the training converters' own, since predict reads rows through them.
    assert f"{data}:3: text: missing" in message
    assert f"{data}:4: text: empty" in message
    assert not out.exists()

    result = runner.invoke(app, ["predict", str(classify_run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 1 and f"{data}:2: not valid JSON" in result.output and not out.exists()


def test_predict_command(classify_run: Path, chat_run: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": "lost my card"}, {"text": "balance?"}])
    out = tmp_path / "preds.jsonl"
    result = runner.invoke(app, ["predict", str(classify_run), "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 prediction(s) written" in result.output and len(out.read_text().splitlines()) == 2
    # A chat row without a user turn to answer is named too.
    bad = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}])
    result = runner.invoke(app, ["predict", str(chat_run), "--data", str(bad), "--out", str(out)])
    assert (
        result.exit_code == 1
        and f"{bad}:1: messages: the conversation must end with a user turn" in result.output
    )


def test_a_classifier_does_not_generate(classify_run: Path) -> None:
    with pytest.raises(TunelabError, match="a classify model scores text, it does not generate it"):
        generate_text(load_trained(classify_run), "hello")
    result = runner.invoke(app, ["chat", str(classify_run)], input="hi\n")
    assert result.exit_code == 1 and "use `tunelab predict`" in result.output


def test_load_trained_accepts_a_run_or_its_final_folder_and_explains_what_else(
    classify_run: Path, tmp_path: Path
) -> None:
    from_run, from_final = load_trained(classify_run), load_trained(classify_run / "final")
    assert from_run.final_dir == from_final.final_dir == classify_run / "final"
    assert from_run.run_dir == from_final.run_dir == classify_run
    assert (from_run.task, from_run.method) == ("classify", "lora")
    assert from_run.label_map == {"balance": 0, "card": 1, "transfer": 2}

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text('{"status": "failed"}')
    with pytest.raises(TunelabError, match=r"has no final/ model \(status: failed\)"):
        load_trained(unfinished)
    with pytest.raises(TunelabError, match="not a tunelab run, final/ or export folder"):
        load_trained(tmp_path)


@pytest.mark.parametrize(
    ("template", "marker"),
    [(CHATML, "<|im_end|>"), (ALPACA, "</s>"), (LLAMA3, None), (None, None)],
    ids=["chatml", "alpaca", "llama3-marker-not-a-token", "no-template"],
)
def test_end_of_turn_token_is_read_from_the_template(
    tokenizer: Any, template: str | None, marker: str | None
) -> None:
    tokenizer.chat_template = template
    expected = [tokenizer.convert_tokens_to_ids(marker)] if marker else []
    assert end_of_turn_ids(tokenizer) == expected


def test_end_of_turn_token_of_a_template_with_its_own_special_token(tokenizer: Any) -> None:
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    tokenizer.chat_template = LLAMA3
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def test_predict_a_reward_model_gives_scores(tmp_path: Path, tiny_bert: Path) -> None:
    # No run trains a reward model here: a final/ folder as a reward run leaves it (one-output head).
    final = tmp_path / "final"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1)
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(final)
    (final / "tunelab.json").write_text(json.dumps({"task": "reward", "method": "full", "base_model": "x"}))
    data = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a helpful answer"}, {"text": "no"}])

    trained = load_trained(final)
    predict_file(trained, data, tmp_path / "scores.jsonl")
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    with torch.no_grad():
        expected = trained.model(**trained.tokenizer("no", return_tensors="pt")).logits[0, 0].item()
    assert list(scores[0]) == ["text", "pred_score"]
    assert scores[1]["pred_score"] == pytest.approx(expected, abs=1e-6)
