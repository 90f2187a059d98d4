"""Use a trained model: one answer (`generate_text`) or a file of predictions (`predict_file`); the
interactive chat (chat.py) is built on the same encoding and generation.

Prompts are rendered with the chat template saved in final/ (the one training rendered with, tools
included) and encoded without extra special tokens, exactly as training encoded them, so the model sees
at inference the layout it learned. Generation stops at EOS and at the template's end-of-turn token.
"""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TextStreamer

from tunelab.data.fields import Columns
from tunelab.data.inputs import PredictInput, read_inputs
from tunelab.data.templates import supports_tools, writes_hermes_calls
from tunelab.errors import TunelabError
from tunelab.evaluation.settings import DataSettings
from tunelab.evaluation.tool_calls import parse_tool_calls
from tunelab.files import write_text_atomic
from tunelab.generation import encode_chat, encode_prompt, generate_batch, is_encoder_decoder
from tunelab.models.restore import Trained
from tunelab.tasks.registry import task_spec

Messages = list[dict[str, Any]]


def to_best_device(trained: Trained) -> Trained:
    """The model on the GPU when there is one (loading leaves it on the CPU)."""
    if torch.cuda.is_available():
        trained.model.to("cuda")
    return trained


# ---------------------------------------------------------------------------------------------
# One answer


def render_prompt(trained: Trained, messages: Messages) -> str:
    """The conversation plus the assistant's generation prompt, rendered as in training."""
    if not getattr(trained.tokenizer, "chat_template", None):
        raise TunelabError(
            f"{trained.final_dir}: the tokenizer has no chat template, so a conversation cannot be rendered",
            fix="chat and predict need an sft (or preference) run",
        )
    return str(trained.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def generate_text(
    trained: Trained,
    prompt: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
) -> str:
    """One answer to `prompt` (a user message); a pretrain run continues `prompt` as plain text."""
    require_generative(trained)
    task = task_spec(trained.task)
    if task.causal_lm and not task.chat_template and trained.info.get("chat_template") is None:
        # Continued pre-training learned plain text: continue it, with the tokenizer's usual BOS.
        ids = trained.tokenizer(prompt)["input_ids"]
    else:
        turn = {"role": "user", "content": as_trained(trained, prompt)}
        ids = encode_messages(trained, conversation(system or trained.info.get("system_prompt"), [turn]))
    return generate_ids(trained, ids, max_new_tokens=max_new_tokens, temperature=temperature)


def as_trained(trained: Trained, prompt: str) -> str:
    """A prompt written as the run's data.prompt_template wrote its training prompts, when that
    template has one field to fill ('Summarize the dialogue:\n\n{dialogue}'); else the prompt as is."""
    template = trained.info.get("prompt_template")
    if not template:
        return prompt
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return template.format_map({fields.pop(): prompt}) if len(fields) == 1 else prompt


def conversation(system: str | None, turns: Messages) -> Messages:
    return ([{"role": "system", "content": system}] if system else []) + turns


def encode_messages(
    trained: Trained, messages: Messages, tools: list[dict[str, Any]] | None = None
) -> list[int]:
    if is_encoder_decoder(trained.model):
        # Trained on one source per target, an encoder-decoder answers the last user turn on its own
        # (after the system text, as its training sources had it); chat keeps no history for it.
        system = [m for m in messages[:1] if m["role"] == "system"]
        return encode_prompt(trained.model, trained.tokenizer, [*system, messages[-1]])
    render_prompt(trained, messages)  # without a chat template: a clear error
    if tools:
        require_tools(trained)
    return encode_chat(trained.tokenizer, messages, tools)


def require_tools(trained: Trained) -> None:
    """Refuse tools to a model whose chat template would drop them from the prompt."""
    if not supports_tools(trained.tokenizer):
        raise TunelabError(
            f"{trained.final_dir}: its chat template cannot render tools (the functions a model may call)",
            fix="fine-tune on function-calling data (the run saves a template that writes tools), or leave "
            "the tools out",
        )


def generate_ids(
    trained: Trained,
    ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float,
    streamer: TextStreamer | None = None,
) -> str:
    if max_new_tokens < 1 or temperature < 0:
        raise TunelabError(
            f"max_new_tokens must be >= 1 and temperature >= 0 (got {max_new_tokens}, {temperature})"
        )
    model = trained.model
    with trained.precision.autocast(next(model.parameters()).device.type):
        (answer,) = generate_batch(
            model,
            trained.tokenizer,
            [ids],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            streamer=streamer,
        )
    return answer


def require_generative(trained: Trained) -> None:
    if not trained.generative:
        raise TunelabError(
            f"{trained.final_dir}: a {trained.task} model scores text, it does not generate it",
            fix="use `tunelab predict` for classifiers and reward models",
        )


# ---------------------------------------------------------------------------------------------
# Predictions for a file


PREDICTED = "pred_"  # the prefix of every prediction column, so none can overwrite an input column
OUTPUT_FORMATS = (".csv", ".tsv", ".jsonl", ".json")


def output_format(out_file: str | Path) -> str:
    """The format `predict` writes `out_file` in, read off its suffix; any other suffix is refused."""
    suffix = Path(out_file).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        named = repr(suffix) if suffix else "a file without a suffix"
        raise TunelabError(
            f"{out_file}: predictions cannot be written as {named}",
            fix="name the output .csv, .tsv, .jsonl or .json (one JSON array); the format follows the suffix",
        )
    return suffix


def predict_file(
    trained: Trained,
    data_file: str | Path,
    out_file: str | Path,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    max_seq_len: int | None = None,
    columns: Columns | None = None,
    keep: Sequence[str] | None = None,
) -> int:
    """One output row per input row, in input order, in the format `out_file`'s suffix names (CSV, TSV,
    JSON lines or a JSON array); returns the number of rows.

    Rows are read through `columns` (default: the run's data.columns and text columns), so the run's
    own training file predicts as is. Each output row holds its input row's columns (all, or those
    `keep` names) and, beside them, the prediction's, each named pred_<what>:
    classify: pred_label, pred_probabilities (by label name); reward: pred_score; token_classify:
    pred_tokens, pred_tags, pred_entities; generative runs: pred_answer to each row's prompt (a
    conversation without its last assistant turn, a prompt, or an instruction), rendered with the
    row's `tools`, and for such a row pred_tool_calls ({name, arguments} parsed from the answer) and
    pred_tool_calls_unparsed (its <tool_call> blocks that did not parse). CSV and TSV spread
    the probabilities over a column per label (pred_probabilities.<label>) and write lists as JSON.
    Texts are truncated to `max_seq_len` tokens (default: the run's train.max_seq_len). Every bad row
    is reported (file:line: reason) and nothing is written; the output file appears complete or not
    at all.
    """
    suffix = output_format(out_file)
    if Path(out_file).resolve() == Path(data_file).resolve():
        raise TunelabError(
            f"--out {out_file} is the --data file: writing the predictions would replace the rows they came from",
            fix="write them to another file, e.g. --out predictions" + suffix,
        )
    if batch_size < 1:
        raise TunelabError(f"batch_size must be >= 1, got {batch_size}")
    run = DataSettings.of_run(trained.recipe_dir)  # a classifier sees at most what it was trained on
    tagging = task_spec(trained.task).head.word_level
    inputs = read_inputs(
        data_file, columns or run.columns, generative=trained.generative, tagging=tagging, keep=keep
    )
    _refuse_overwritten(Path(data_file), inputs)
    if trained.generative:
        predictions = _predict_answers(trained, inputs, batch_size, max_new_tokens)
    elif tagging:
        predictions = _predict_tags(trained, inputs, batch_size, max_seq_len or run.max_seq_len)
    else:
        predictions = predict_scores(trained, inputs, batch_size, max_seq_len or run.max_seq_len)
    rows = [
        {**item.copied, **{PREDICTED + name: value for name, value in prediction.items()}}
        for item, prediction in zip(inputs, predictions, strict=True)
    ]
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, _written(rows, suffix))
    return len(rows)


def _refuse_overwritten(data_file: Path, inputs: list[PredictInput]) -> None:
    """An input column named like a prediction (a predictions file fed back in) is refused before any
    work: it would be overwritten, or written twice."""
    taken = dict.fromkeys(name for item in inputs for name in item.copied if name.startswith(PREDICTED))
    if taken:
        raise TunelabError(
            f"{data_file}: the column(s) {', '.join(taken)} would be mistaken for this run's predictions, "
            f"whose columns start with {PREDICTED}",
            fix="--keep the columns to carry (e.g. --keep id,text), or rename those columns",
        )


def _written(rows: list[dict[str, Any]], suffix: str) -> str:
    # default=str: a column JSON has no type for (a parquet timestamp) is written as its text.
    as_json = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    if suffix == ".jsonl":
        return "".join(f"{line}\n" for line in as_json)
    if suffix == ".json":
        return "[\n" + ",\n".join(as_json) + "\n]\n"
    return _delimited(rows, "\t" if suffix == ".tsv" else ",")


def _delimited(rows: list[dict[str, Any]], delimiter: str) -> str:
    """CSV or TSV: the input columns (all rows' columns, first seen first), then the predictions'.
    csv quotes a cell holding the delimiter, a quote or a newline, so every cell reads back as it was."""
    flat = [_flattened(row) for row in rows]
    names = list(dict.fromkeys(name for row in flat for name in row))
    header = [n for n in names if not n.startswith(PREDICTED)] + [n for n in names if n.startswith(PREDICTED)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(row.get(name)) for name in header] for row in flat)
    return buffer.getvalue()


def _flattened(row: dict[str, Any]) -> dict[str, Any]:
    """A prediction's mapping (a classifier's probabilities) as a column per key, `name.key`, the way
    pandas.json_normalize names them; anything else stays one cell."""
    flat: dict[str, Any] = {}
    for name, value in row.items():
        if name.startswith(PREDICTED) and isinstance(value, dict):
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    return flat


def _cell(value: Any) -> str:
    # Text as is; a missing value empty; numbers, lists and mappings as JSON (floats exactly, by repr).
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _predict_answers(
    trained: Trained, inputs: list[PredictInput], batch_size: int, max_new_tokens: int
) -> list[dict[str, Any]]:
    prompts = [encode_messages(trained, item.chat(), item.tool_list()) for item in inputs]
    with trained.precision.autocast(next(trained.model.parameters()).device.type):
        answers = generate_batch(
            trained.model, trained.tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    parses_calls = writes_hermes_calls(trained.tokenizer)
    return [
        {"answer": answer, **(_calls(answer) if item.tools and parses_calls else {})}
        for item, answer in zip(inputs, answers, strict=True)
    ]


def _calls(answer: str) -> dict[str, Any]:
    """The calls an answer to a row with tools makes, parsed from its <tool_call> blocks; a block that
    does not parse stays only in the answer's text, and is counted."""
    parsed = parse_tool_calls(answer)
    calls = [{"name": call.name, "arguments": call.arguments} for call in parsed.calls]
    return {"tool_calls": calls, "tool_calls_unparsed": len(parsed.errors)}


def _predict_tags(
    trained: Trained, inputs: list[PredictInput], batch_size: int, max_seq_len: int
) -> list[dict[str, Any]]:
    """A tag per word (read off each word's first sub-token, as training scored it), and the entities
    the tags spell (seqeval's reading of BIO tags). A sentence longer than max_seq_len has its words
    past the cut tagged null and counted, never silently dropped."""
    from seqeval.metrics.sequence_labeling import get_entities

    from tunelab.data.records import Tagged
    from tunelab.data.tagged import tokenize_tagged
    from tunelab.data.tokenize import LengthPolicy
    from tunelab.evaluation.tagging import predicted_tags
    from tunelab.training.precision import make_accelerator

    assert trained.label_map is not None
    names = sorted(trained.label_map, key=trained.label_map.__getitem__)
    # The words' gold tags are unknown: any known tag stands in, only the positions it marks are used.
    records = [Tagged(item.words, (names[0],) * len(item.words)) for item in inputs]
    examples, _ = tokenize_tagged(trained.tokenizer, records, trained.label_map, LengthPolicy(max_seq_len))
    accelerator = make_accelerator(trained.precision.mixed_precision)
    model = accelerator.prepare_model(trained.model, evaluation_mode=True)
    _, tags = predicted_tags(model, examples, names, batch_size, trained.tokenizer.pad_token_id, accelerator)
    results = []
    for item, found in zip(inputs, tags, strict=True):
        row: dict[str, Any] = {
            "tokens": list(item.words),
            "tags": [*found, *[None] * (len(item.words) - len(found))],
        }
        row["entities"] = [
            {"type": kind, "start": start, "end": end + 1, "text": " ".join(item.words[start : end + 1])}
            for kind, start, end in get_entities(list(found))
        ]
        if len(found) < len(item.words):
            row["untagged_words"] = len(item.words) - len(found)  # past max_seq_len
        results.append(row)
    return results


@torch.no_grad()
def predict_scores(
    trained: Trained, inputs: list[PredictInput], batch_size: int, max_seq_len: int
) -> list[dict[str, Any]]:
    """Classifier probabilities by label name, or a reward model's score, batch by batch."""
    model, tokenizer = trained.model, trained.tokenizer
    device = next(model.parameters()).device
    names = sorted(trained.label_map, key=trained.label_map.__getitem__) if trained.label_map else []
    results: list[dict[str, Any]] = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        # Encoded as training encoded labelled text: the tokenizer's own special tokens, truncated.
        encoded = tokenizer(
            [item.text for item in batch],
            _pairs(batch),
            truncation=True,
            max_length=max_seq_len,
            padding=True,
            return_tensors="pt",
        ).to(device)
        with trained.precision.autocast(device.type):
            logits = model(**encoded).logits.float()
        if task_spec(trained.task).head.outputs == "score":  # a reward model: one score per row
            results.extend({"score": float(score)} for score in logits[:, 0].tolist())
            continue
        for row in torch.softmax(logits, dim=-1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": names[best], "probabilities": dict(zip(names, row, strict=True))})
    return results


def _pairs(batch: Sequence[PredictInput]) -> list[str] | None:
    # The run's columns name a pair column or not, so every row has a pair or none does.
    pairs = [item.text_pair for item in batch]
    return None if pairs[0] is None else [str(pair) for pair in pairs]
