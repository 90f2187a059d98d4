"""Label-preserving augmentation of classify train rows (`data.augment`).

- `eda`: Wei and Zou (2019), "EDA: Easy Data Augmentation Techniques", minus synonym replacement
  (it needs WordNet, which tunelab does not ship). Each new row applies one operation, chosen at
  random among those with a non-zero rate, to its source row's words:
  - swap: n = max(1, swap x words) random pairs of words trade places;
  - delete: each word is left out with probability `delete` (at least one word stays);
  - insert: n = max(1, insert x words) copies of the row's own words go in at random places (EDA
    inserts synonyms; without WordNet a word of the row stands in).
- `paraphrase`: an instruction model rewrites the row: a local model (a folder or .gguf, through the
  generation core) or any OpenAI-compatible `/chat/completions` endpoint. The data stage never loads a
  model itself: the caller passes a `Paraphraser` that runs the local one (tunelab/paraphrase.py).

Every new row is `augment:<method>:<source row>`, joins train only (this runs after the split), and
goes through the gates a train row goes through: exact duplicates of any row (train, validation, test
or another new row) and near duplicates of held-out rows are dropped, and counted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tunelab.data import quality
from tunelab.data.clean import NearDupConfig, dedup_key
from tunelab.data.endpoint import post_json
from tunelab.data.records import Labeled, record_text
from tunelab.errors import DataError

if TYPE_CHECKING:
    from tunelab.config.safety import AugmentConfig

SOURCE = "augment"

# The local model of data.augment.model, answering each prompt (a request to rewrite one row), in order.
# Built above the data stage, which would otherwise have to load a model (tunelab/paraphrase.py).
Paraphraser = Callable[[list[str]], list[str]]


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


def paraphrases(texts: list[str], cfg: AugmentConfig, paraphraser: Paraphraser | None = None) -> list[str]:
    prompts = [cfg.prompt.format(text=text) for text in texts]
    answers = _endpoint_answers(prompts, cfg) if cfg.endpoint else _local_answers(prompts, paraphraser)
    return [_first_line(answer) for answer in answers]


def _first_line(answer: str) -> str:
    """The rewrite alone: models like to add a second line of commentary, or quotes."""
    line = next((line for line in answer.strip().splitlines() if line.strip()), "")
    return line.strip().strip('"').strip()


def _local_answers(prompts: list[str], paraphraser: Paraphraser | None) -> list[str]:
    if paraphraser is None:  # a caller's mistake: the recipe asked for a local model
        raise DataError(
            "data.augment.model: paraphrasing with a local model needs a paraphraser from the caller of "
            "the data stage (load_records(..., paraphraser=...))",
            fix="build one with tunelab.paraphrase.paraphraser_for(recipe)",
        )
    return paraphraser(prompts)


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
    splits: dict[str, list[Any]],
    cfg: AugmentConfig,
    near: NearDupConfig,
    seed: int,
    paraphraser: Paraphraser | None = None,
) -> tuple[list[Any], dict[str, Any]]:
    """Train with its new rows appended (after the gates), and the counts for report.json. `paraphraser`
    rewrites with data.augment.model's local model (see `Paraphraser`)."""
    train: list[Labeled] = splits["train"]
    rng = random.Random(seed)
    sources = [row for row in train for _ in range(cfg.copies)]
    if cfg.method == "eda":
        texts = [eda(row.text, cfg, rng) for row in sources]
    else:
        texts = paraphrases([row.text for row in sources], cfg, paraphraser)
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
