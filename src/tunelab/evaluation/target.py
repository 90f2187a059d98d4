"""`tunelab eval`: score a run, a final/ folder or a base model on a data file.

A run's final/ folder says how to rebuild the model (tunelab.json: task, method, base model): full
weights load from the folder itself; an adapter loads onto its base model through peft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer

from tunelab.config import ModelConfig
from tunelab.data.formats import Columns, load_split
from tunelab.data.records import Chat, Message
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy, tokenize_chats, tokenize_labeled
from tunelab.errors import TunelabError
from tunelab.evaluation import metrics as m
from tunelab.evaluation.generate import generate
from tunelab.models.load import load_model
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import OBJECTIVES

GENERATIVE = ("bleu", "chrf", "rouge", "exact_match")


@dataclass
class Target:
    model: Any
    tokenizer: Any
    task: str
    label_map: dict[str, int] | None
    run_dir: Path | None  # where eval.json goes when the target is a run


def load_target(target: str, task: str | None = None) -> Target:
    path = Path(target)
    final = path / "final" if (path / "final" / "tunelab.json").is_file() else path
    if not (final / "tunelab.json").is_file():  # a base model: a Hub id or a plain model folder
        chosen = task or "sft"
        if chosen == "classify":
            raise TunelabError(
                f"{target} is a base model: a classifier needs a trained head",
                fix="evaluate a run or its final/ folder",
            )
        loaded = load_model(ModelConfig(name=target), chosen)
        return Target(loaded.model, loaded.tokenizer, chosen, None, None)
    info = json.loads((final / "tunelab.json").read_text(encoding="utf-8"))
    labels_file = final / "labels.json"
    label_map = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else None
    if (final / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_model(ModelConfig(name=info["base_model"]), info["task"], label_map)
        model = PeftModel.from_pretrained(base.model, str(final))
    else:
        model = load_model(ModelConfig(name=str(final)), info["task"], label_map).model
    tokenizer = AutoTokenizer.from_pretrained(str(final))  # saved with the chat template used in training
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    run_dir = final.parent if final.name == "final" else None
    return Target(model, tokenizer, info["task"], label_map, run_dir)


def evaluate_file(
    target: Target,
    data_file: str,
    *,
    metrics: tuple[str, ...] = (),
    columns: Columns | None = None,
    max_seq_len: int = 512,
    batch_size: int = 16,
    max_new_tokens: int = 128,
) -> dict[str, Any]:
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = target.model.to(accelerator.device)
    kind = "labeled" if target.task == "classify" else "chat"
    records = load_split(data_file, columns=columns, kind=kind, on_error="fail").records
    policy = LengthPolicy(max_seq_len)
    if target.task == "classify":
        assert target.label_map is not None
        examples, _ = tokenize_labeled(target.tokenizer, records, target.label_map, policy)
    else:
        ensure_chat_template(target.tokenizer)
        examples, _ = tokenize_chats(target.tokenizer, records, policy)
    pad_id = target.tokenizer.pad_token_id

    def batches() -> Any:
        return eval_batches(examples, batch_size, pad_id, accelerator)

    result: dict[str, Any] = {"data": str(data_file), "task": target.task, "examples": len(examples)}
    result["metrics"] = m.evaluate(
        model, batches(), OBJECTIVES[target.task], target.task, accelerator, prefix="eval"
    )
    if target.task == "classify":
        assert target.label_map is not None
        names = sorted(target.label_map, key=target.label_map.__getitem__)
        y_true, y_pred = m.predicted_labels(model, batches(), accelerator)
        result["classification"] = m.classification_scores(y_true, y_pred, names)
        result["confusion_matrix"], result["labels"] = result["classification"]["confusion_matrix"], names
    elif any(name in GENERATIVE for name in metrics):
        result["metrics"].update(_generative(model, target.tokenizer, records, metrics, max_new_tokens))
    return result


def _generative(
    model: Any, tokenizer: Any, chats: list[Chat], metrics: tuple[str, ...], max_new_tokens: int
) -> dict:
    """Generate each conversation's last assistant turn from what precedes it; score against it."""
    prompts, references = [], []
    for chat in chats:
        last = max(i for i, message in enumerate(chat.messages) if message.role == "assistant")
        prompts.append([_as_dict(message) for message in chat.messages[:last]])
        references.append(chat.messages[last].content)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stops = [end_of_turn] if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id else []
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_token_ids=stops)
    scores: dict[str, float] = {}
    if "bleu" in metrics:
        scores["eval_bleu"] = m.bleu(answers, references)
    if "chrf" in metrics:
        scores["eval_chrf"] = m.chrf(answers, references)
    if "rouge" in metrics:
        scores.update({f"eval_{k}": v for k, v in m.rouge(answers, references).items()})
    if "exact_match" in metrics:
        scores["eval_exact_match"] = m.exact_match(answers, references)
    return scores


def _as_dict(message: Message) -> dict[str, str]:
    return {"role": message.role, "content": message.content}
