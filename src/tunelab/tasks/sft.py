"""sft: instruction and chat tuning. Chats rendered with the chat template, the loss on the assistant's
tokens; scored by its loss and, with eval.metrics, by its generated answers beside the base model's
zero- and few-shot answers.

Like every task module, it names its hooks and imports their code only when one is called: reading a
recipe asks the registry, and must not import torch."""

from __future__ import annotations

from typing import Any

from tunelab.config.validation_metrics import GENERATED_MAIN
from tunelab.tasks.registry import CAUSAL_LM, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.records import Text
    from tunelab.data.tokenize import tokenize_chats, tokenize_texts

    if isinstance(records[0], Text):  # replay data (general text) mixed into instruction tuning
        return tokenize_texts(tokenizer, records, policy)
    return tokenize_chats(tokenizer, records, policy)


def collate(examples: list[Any], pad_token_id: int) -> Any:
    from tunelab.data.tokenize import collate

    return collate(examples, pad_token_id)


def objective(recipe: Any, model: Any, class_weights: Any) -> Any:
    from tunelab.training.objectives import CAUSAL_LM_OBJECTIVE

    return CAUSAL_LM_OBJECTIVE


def baselines(context: Any) -> Any:
    from tunelab.evaluation.task_scores import chat_baselines_of

    return chat_baselines_of(context)


def validation_extras(context: Any) -> Any:
    from tunelab.evaluation.task_scores import generated_validation_scores

    return generated_validation_scores(context)


SFT = register_task(
    TaskSpec(
        name="sft",
        head=CAUSAL_LM,
        record_kinds=("chat",),
        replay_kinds=("chat", "text"),
        tokenize=tokenize,
        collate=collate,
        objective=objective,
        validation_metrics=("loss", "perplexity"),
        main_metrics=(*GENERATED_MAIN, "loss"),
        baselines=baselines,
        validation_extras=validation_extras,
        chat_template=True,
        tool_calls=True,
        generates_answers=True,
        several_datasets=True,
        packable=True,
        private=True,
        canaries=True,
        perplexity=True,
        token_loss=True,
    )
)
