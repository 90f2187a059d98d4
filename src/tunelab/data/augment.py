"""Label-preserving augmentation of classify train rows (`data.augment`).

- `eda`: Wei and Zou (2019), "EDA: Easy Data Augmentation Techniques", minus synonym replacement
  (it needs WordNet, which tunelab does not ship). Each new row applies one operation, chosen at
  random among those with a non-zero rate, to its source row's words:
  - swap: n = max(1, swap x words) random pairs of words trade places;
  - delete: each word is left out with probability `delete` (at least one word stays);
  - insert: n = max(1, insert x words) copies of the row's own words go in at random places (EDA
    inserts synonyms; without WordNet a word of the row stands in).
- `paraphrase`: an instruction model rewrites the row: a local model (a folder or .gguf, through the
  generation core) or any OpenAI-compatible `/chat/completions` endpoint.

Every new row is `augment:<method>:<source row>`, joins train only (this runs after the split), and
goes through the gates a train row goes through: exact duplicates of any row (train, validation, test
or another new row) and near duplicates of held-out rows are dropped, and counted.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tunelab.data import quality
from tunelab.data.clean import NearDupConfig, dedup_key
from tunelab.data.endpoint import post_json
from tunelab.data.records import Labeled, record_text

if TYPE_CHECKING:
    from tunelab.config.safety import AugmentConfig

SOURCE = "augment"


def eda(text: str, cfg: AugmentConfig, rng: random.Random) -> str:
    words = text.split()
    operations = [op for op in ("swap", "delete", "insert") if getattr(cfg, op) > 0]
    if len(words) < 2 or not operations:
        return text
    operation = rng.choice(operations)
    if operation == "swap":
        for _ in range(max(1, int(cfg.swap * len(words)))):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif operation == "delete":
        kept = [w for w in words if rng.random() >= cfg.delete]
        words = kept or [rng.choice(words)]
    else:
        for _ in range(max(1, int(cfg.insert * len(words)))):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def paraphrases(texts: list[str], cfg: AugmentConfig, seed: int) -> list[str]:
    prompts = [cfg.prompt.format(text=text) for text in texts]
    answers = _endpoint_answers(prompts, cfg) if cfg.endpoint else _local_answers(prompts, cfg, seed)
    return [_first_line(answer) for answer in answers]


def _first_line(answer: str) -> str:
    """The rewrite alone: models like to add a second line of commentary, or quotes."""
    line = next((line for line in answer.strip().splitlines() if line.strip()), "")
    return line.strip().strip('"').strip()


def _local_answers(prompts: list[str], cfg: AugmentConfig, seed: int) -> list[str]:
    import torch

    from tunelab.config import ModelConfig
    from tunelab.generation import encode_chat, generate_batch
    from tunelab.models.load import load_model, load_tokenizer

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


def _endpoint_answers(prompts: list[str], cfg: AugmentConfig) -> list[str]:
    assert cfg.endpoint is not None
    answers = []
    for prompt in prompts:
        body = {
            "model": cfg.endpoint_model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_new_tokens,
        }
        answer = post_json(
            cfg.endpoint,
            "chat/completions",
            body,
            setting="data.augment",
            fix="check data.augment.endpoint and OPENAI_API_KEY, or use data.augment.model",
            timeout=120,
        )
        answers.append(answer["choices"][0]["message"]["content"] or "")
    return answers


def augment_train(
    splits: dict[str, list[Any]], cfg: AugmentConfig, near: NearDupConfig, seed: int
) -> tuple[list[Any], dict[str, Any]]:
    """Train with its new rows appended (after the gates), and the counts for report.json."""
    train: list[Labeled] = splits["train"]
    rng = random.Random(seed)
    sources = [row for row in train for _ in range(cfg.copies)]
    if cfg.method == "eda":
        texts = [eda(row.text, cfg, rng) for row in sources]
    else:
        texts = paraphrases([row.text for row in sources], cfg, seed)
    made = [
        replace(row, text=text, source=f"{SOURCE}:{cfg.method}:{row.source}")
        for row, text in zip(sources, texts, strict=True)
    ]
    empty = sum(1 for row in made if not row.text.strip())
    made = [row for row in made if row.text.strip()]
    # Copies of a train row or of another new row are duplicates; copies of held-out rows, exact or
    # near, are leaks, and the leakage check below finds those.
    seen = {dedup_key(record_text(r)) for r in train}
    unique: list[Labeled] = []
    for row in made:
        key = dedup_key(record_text(row))
        if key not in seen:
            seen.add(key)
            unique.append(row)
    held_out: dict[str, list[Any]] = {s: splits[s] for s in ("validation", "test") if s in splits}
    kept: list[Any] = list(unique)
    if held_out:
        kept = quality.leakage(kept, held_out, near=near, policy="drop")[0]
    step = {
        "method": cfg.method,
        "copies": cfg.copies,
        "generated": len(texts),
        "empty": empty,
        "duplicates_removed": len(made) - len(unique),
        "leaked_removed": len(unique) - len(kept),
        "added": len(kept),
    }
    return [*train, *kept], step
