"""The non-generative endpoints: embeddings from an encoder, labels from a fine-tuned classifier."""

from __future__ import annotations

from typing import Any

from tunelab.serving.errors import APIError
from tunelab.serving.models import ModelPool
from tunelab.tasks.registry import task_spec

MAX_TEXTS = 2048  # OpenAI's limit on inputs per embeddings request
MAX_TOKENS = 512


def _check(texts: list[str]) -> None:
    if not texts or len(texts) > MAX_TEXTS or not all(isinstance(t, str) and t for t in texts):
        raise APIError(400, f"input: 1 to {MAX_TEXTS} non-empty strings", param="input")


def embed(pool: ModelPool, name: str, texts: list[str]) -> tuple[list[list[float]], int]:
    """Unit-length mean-pooled embeddings (sentence-transformers' recipe for MiniLM), as the classify
    baselines compute them; and the tokens read."""
    from tunelab.evaluation.baselines import embed as embed_examples

    _check(texts)
    model, tokenizer = pool.encoder(name)
    encoded = [tokenizer(t, truncation=True, max_length=MAX_TOKENS)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vectors = embed_examples(model, [{"input_ids": ids} for ids in encoded], pad)
    return vectors.tolist(), sum(len(ids) for ids in encoded)


def classify(pool: ModelPool, name: str, texts: list[str]) -> list[dict[str, Any]]:
    """A fine-tuned classifier's label and probabilities per text (`tunelab predict`'s scores)."""
    from tunelab.data.inputs import PredictInput
    from tunelab.inference import predict_scores

    _check(texts)
    pool.describe(name)
    served = pool.get(name)
    if not task_spec(served.trained.task).head.labels_examples:
        raise APIError(400, f"{name} is a {served.trained.task} model, not a classifier", param="model")
    inputs = [PredictInput(text=text) for text in texts]
    return predict_scores(served.trained, inputs, batch_size=32, max_seq_len=MAX_TOKENS)
