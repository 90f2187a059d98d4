"""The local model that `data.augment: {method: paraphrase, model: ...}` rewrites rows with.

The data stage asks for rewrites but never loads a model (a stage does not reach into a later one):
`train`, `plan`, `validate` and `data prepare` build the paraphraser here and pass it to
`load_records(recipe, paraphraser=...)`. The model loads only when the data stage calls it, that is when
there are classify train rows to rewrite. An endpoint (data.augment.endpoint) needs no model here: the
data stage posts to it itself (data/endpoint.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tunelab.config import ModelConfig
from tunelab.data.augment import Paraphraser
from tunelab.generation import encode_chat, generate_batch
from tunelab.models.load import load_model, load_tokenizer

if TYPE_CHECKING:
    from tunelab.config import Recipe
    from tunelab.config.safety import AugmentConfig


def paraphraser_for(recipe: Recipe) -> Paraphraser | None:
    """The paraphraser data.augment.model asks for, or None when the recipe runs no local model."""
    augment = recipe.data.augment
    if augment is None or augment.method != "paraphrase" or augment.model is None:
        return None
    return local_paraphraser(augment, recipe.train.seed)


def local_paraphraser(cfg: AugmentConfig, seed: int) -> Paraphraser:
    """Answers to the rewrite prompts from cfg.model, through the generation core, sampled with `seed`."""

    def answer(prompts: list[str]) -> list[str]:
        assert cfg.model is not None
        model_cfg = ModelConfig(name=cfg.model)
        tokenizer = load_tokenizer(model_cfg, "sft")
        model = load_model(model_cfg, "sft", None, tokenizer=tokenizer).model
        encoded = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
        torch.manual_seed(seed)  # sampled rewrites, reproducibly
        return generate_batch(
            model,
            tokenizer,
            encoded,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            batch_size=16,
        )

    return answer
