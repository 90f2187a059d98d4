"""Generated answers, scored: the task metric that says whether fine-tuning helped.

A falling loss does not mean better answers. In an instruction-tuning run on DialogSum, the test loss
fell from 2.39 to 1.78 while ROUGE-L stayed at 0.16. So when a recipe names `eval.metrics`, an sft run
generates answers to its test split (else validation) three times: with the base model zero-shot,
with the base model few-shot, and with the fine-tuned model. It scores each set against the
references and keeps every answer in generations.jsonl, beside its prompt and reference, for a
person to read. `tunelab eval --metrics` scores the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.records import Chat, Message, ToolCall
from tunelab.data.templates import message_dicts, tool_dicts
from tunelab.evaluation import metrics as m
from tunelab.evaluation.tool_calls import Call, format_tool_call, parse_tool_calls, score_tool_calls
from tunelab.files import read_generation_rows, write_text_atomic
from tunelab.generation import encode_prompt, generate_batch

GENERATIVE = ("bleu", "chrf", "rouge", "exact_match", "tool_calls")
# The columns of the comparison table, per eval.metrics entry.
HEADLINE = {
    "exact_match": ("exact_match",),
    "rouge": ("rougeL",),
    "bleu": ("bleu",),
    "chrf": ("chrf",),
    "tool_calls": ("tool_name_accuracy", "tool_args_exact_match"),
}


@dataclass(frozen=True)
class Asked:
    """A conversation cut before its last answer: the prompt to generate from, and that answer."""

    prompt: list[dict[str, Any]]
    reference: str
    source: str | None = None
    tools: list[dict[str, Any]] | None = None  # the functions the model may call (the row's tools)
    calls: tuple[ToolCall, ...] = ()  # the reference answer's calls, when it calls functions


def ask(chats: Sequence[Chat]) -> list[Asked]:
    """Each conversation's last assistant turn becomes the reference, and everything before it the prompt."""
    asked = []
    for chat in chats:
        last = max(i for i, message in enumerate(chat.messages) if message.role == "assistant")
        prompt, reference = message_dicts(chat.messages[:last]), chat.messages[last]
        tools = tool_dicts(chat.tools)
        asked.append(Asked(prompt, answer_text(reference), chat.source, tools, reference.tool_calls))
    return asked


def answer(
    model: Any, tokenizer: Any, asked: Sequence[Asked], *, max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy answers, one per prompt, rendered and stopped as training taught (generation.py)."""
    prompts = [encode_prompt(model, tokenizer, item.prompt, item.tools) for item in asked]
    return generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)


def answer_text(message: Message) -> str:
    """An assistant turn as the built-in template writes it after the generation prompt: its text, then
    each call as a <tool_call> block (chatml_tools); what a generated answer is compared with."""
    calls = [format_tool_call(call.name, json.loads(call.arguments)) for call in message.tool_calls]
    return "\n".join([message.content, *calls] if message.content else calls)


def score_answers(
    answers: Sequence[str], asked: Sequence[Asked], metrics: Sequence[str], prefix: str
) -> dict[str, float]:
    """score() against each question's reference, and with `tool_calls` the calls parsed from each answer
    against the reference's calls (evaluation/tool_calls.py)."""
    scores = score(
        answers, [item.reference for item in asked], [m for m in metrics if m != "tool_calls"], prefix
    )
    if "tool_calls" in metrics:
        references = [[Call(c.name, json.loads(c.arguments)) for c in item.calls] for item in asked]
        scores.update(score_tool_calls(references, [parse_tool_calls(text) for text in answers], prefix))
    return scores


def score(
    answers: Sequence[str],
    references: Sequence[str] | Sequence[list[str]],
    metrics: Sequence[str],
    prefix: str,
) -> dict[str, float]:
    """`{prefix}_{metric}` for each generative metric asked (ROUGE gives rouge1, rouge2 and rougeL)."""
    scores: dict[str, float] = {}
    if "bleu" in metrics:
        scores[f"{prefix}_bleu"] = m.bleu(answers, references)
    if "chrf" in metrics:
        scores[f"{prefix}_chrf"] = m.chrf(answers, references)
    if "rouge" in metrics:
        scores.update({f"{prefix}_{k}": v for k, v in m.rouge(answers, references).items()})
    if "exact_match" in metrics:
        scores[f"{prefix}_exact_match"] = m.exact_match(answers, references)
    return scores


def write_generations(path: Path, asked: Sequence[Asked], answers: Mapping[str, Sequence[str]]) -> None:
    """generations.jsonl: one row per scored example, with its prompt, its reference and every model's
    answer (zero_shot, few_shot, fine_tuned), so that a person can read what the numbers summarise."""
    rows = []
    for i, item in enumerate(asked):
        row: dict[str, Any] = {"source": item.source, "prompt": item.prompt, "reference": item.reference}
        row.update({name: given[i] for name, given in answers.items()})
        rows.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(path, "\n".join(rows) + "\n")


def read_generations(path: Path) -> dict[str, list[str]]:
    """The answers generations.jsonl already holds, by model (a resumed run keeps its baselines')."""
    rows = read_generation_rows(path)
    names = [key for key in ("zero_shot", "few_shot", "fine_tuned") if rows and key in rows[0]]
    return {name: [row[name] for row in rows] for name in names}


def shown_examples(count: int, total: int, seed: int) -> list[int]:
    """Which examples a report shows before and after: a seeded draw, not the best ones."""
    return sorted(random.Random(seed).sample(range(total), min(count, total)))


NAMES = {
    "zero_shot": "zero-shot (base model)",
    "few_shot": "few-shot (base model)",
    "fine_tuned": "fine-tuned",
}


def comparison(rows: dict[str, dict[str, Any]], metrics: Sequence[str], prefix: str, count: int) -> list[str]:
    """The task metric for each model, as aligned lines: the table a user reads to see whether it helped."""
    keys = [f"{prefix}_{key}" for name in metrics for key in HEADLINE[name]]
    title = f"task metric, {count} {prefix} examples"
    width = max(len(title), *(2 + len(NAMES[name]) for name in rows))
    widths = [max(len(key), 8) for key in keys]
    lines = [title.ljust(width) + "".join(f"  {key:>{w}}" for key, w in zip(keys, widths, strict=True))]
    for name, scores in rows.items():
        cells = [
            f"  {scores[k]:>{w}.4f}" if isinstance(scores.get(k), float) else f"  {'-':>{w}}"
            for k, w in zip(keys, widths, strict=True)
        ]
        lines.append(f"  {NAMES[name]}".ljust(width) + "".join(cells))
    return lines


def example(asked: Asked, before: str | None, after: str, limit: int = 300) -> str:
    """One example as the terminal shows it: the question, then the answer before and after training."""
    question = asked.prompt[-1]["content"] if asked.prompt else ""
    lines = [f"example ({asked.source or 'held out'}):", f"  asked:     {_clip(question, limit)}"]
    lines.append(f"  expected:  {_clip(asked.reference, limit)}")
    if before is not None:
        lines.append(f"  before:    {_clip(before, limit)}")
    lines.append(f"  after:     {_clip(after, limit)}")
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
