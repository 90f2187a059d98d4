"""seq2seq: an encoder-decoder (T5, BART, Marian) learns a target text from a source text, teacher-forced;
scored by its loss and, with eval.metrics, by BLEU, chrF, ROUGE or exact match of its generated targets
beside the base model's (no few-shot baseline for encoder-decoders)."""

from __future__ import annotations

from typing import Any

from tunelab.config.validation_metrics import GENERATED_MAIN
from tunelab.tasks import sft
from tunelab.tasks.registry import SEQ2SEQ_LM, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.seq2seq import tokenize_seq2seq

    return tokenize_seq2seq(tokenizer, records, policy)


def collate(examples: list[Any], pad_token_id: int) -> Any:
    from tunelab.data.seq2seq import collate_seq2seq  # sources and targets padded to their own widths

    return collate_seq2seq(examples, pad_token_id)


def objective(recipe: Any, model: Any, class_weights: Any) -> Any:
    from tunelab.training.objectives import SEQ2SEQ_OBJECTIVE

    return SEQ2SEQ_OBJECTIVE  # every label is a target


def baselines(context: Any) -> Any:
    from tunelab.evaluation.task_scores import seq2seq_baselines

    return seq2seq_baselines(context)


SEQ2SEQ = register_task(
    TaskSpec(
        name="seq2seq",
        head=SEQ2SEQ_LM,
        record_kinds=("chat",),
        tokenize=tokenize,
        collate=collate,
        objective=objective,
        validation_metrics=("loss",),
        main_metrics=(*GENERATED_MAIN, "loss"),
        baselines=baselines,
        validation_extras=sft.validation_extras,  # generated answers, when early stopping watches them
        generates_answers=True,
    )
)
