"""pretrain: continued (domain-adaptive) pre-training on plain text, the loss on every token; long
documents are cut into chunks of max_seq_len and packed by default."""

from __future__ import annotations

from typing import Any

from tunelab.tasks import sft
from tunelab.tasks.registry import CAUSAL_LM, TaskSpec, register_task


def tokenize(tokenizer: Any, records: list[Any], label_map: Any, policy: Any, recipe: Any) -> Any:
    from tunelab.data.tokenize import tokenize_texts

    return tokenize_texts(tokenizer, records, policy)


PRETRAIN = register_task(
    TaskSpec(
        name="pretrain",
        head=CAUSAL_LM,
        record_kinds=("text",),
        replay_kinds=("text",),
        tokenize=tokenize,
        collate=sft.collate,
        objective=sft.objective,  # the causal LM loss; here the labels are every token
        validation_metrics=("loss", "perplexity"),
        main_metrics=("perplexity", "loss"),
        several_datasets=True,
        packable=True,
        packed_by_default=True,
        private=True,
        canaries=True,
        perplexity=True,
        token_loss=True,
    )
)
