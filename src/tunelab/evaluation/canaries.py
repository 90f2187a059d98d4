"""The memorisation audit (`eval.canaries`), after Carlini et al., "The Secret Sharer" (USENIX 2019).

Canaries are made-up rows that carry a random secret ("The secret code of canary-3 is 482913."). Groups
of them go into train, each canary repeated 1, 4, 16... times; a control group of the same size never
does. After training each canary's secret is ranked, by the model's log-likelihood of the answer,
among `candidates` random secrets of the same form:

    exposure = log2(candidates + 1) - log2(rank)

A secret the model has not learned ranks anywhere (exposure about 1 to 2 bits on average, as the
controls show); a memorised one ranks first (the maximum, log2(candidates + 1)). Ranking against a
random sample of the secret space, not all 10^digits of it, is the paper's sampling estimate; it caps
what can be measured at that maximum. Whether greedy decoding of the prompt recites the secret is
checked too: extraction, the stronger failure. DP's guarantee bounds exposure; this shows, rather than
claims, what it buys.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from tunelab.data.canaries import Canary, make_canaries, random_secret
from tunelab.tasks.registry import task_spec

if TYPE_CHECKING:
    from tunelab.config.safety import Canaries

BATCH = 32  # candidates scored per forward pass


def audit(model: Any, tokenizer: Any, cfg: Canaries, task: str) -> dict[str, Any]:
    """Each canary's rank, exposure and extraction; means per repetition count (0: the controls)."""
    from tunelab.generation import generate_batch

    canaries = make_canaries(cfg)
    rng = random.Random(cfg.seed + 2)
    was_training = model.training
    model.eval()
    try:
        rows = [_ranked(model, tokenizer, c, task, cfg, rng) for c in canaries]
        prompts = [_context(tokenizer, c, task) for c in canaries]
        # Room for the whole answer, however finely the tokenizer cuts it, and a little more.
        longest = max(len(_continuation(tokenizer, c, task, c.secret)) for c in canaries)
        answers = generate_batch(model, tokenizer, prompts, max_new_tokens=longest + 4)
    finally:
        model.train(was_training)
    for row, canary, answer in zip(rows, canaries, answers, strict=True):
        row["extracted"] = canary.secret in answer
        row["answer"] = answer
    return {
        "candidates": cfg.candidates,
        "max_exposure": math.log2(cfg.candidates + 1),
        "canaries": rows,
        "by_repetitions": _by_repetitions(rows),
    }


def _context(tokenizer: Any, canary: Canary, task: str) -> list[int]:
    """What the model is given before the answer: the chat prompt (sft), the prefix (pretrain)."""
    from tunelab.generation import encode_chat

    if not task_spec(task).chat_template:
        return list(tokenizer(canary.prefix(), add_special_tokens=False)["input_ids"])
    return encode_chat(tokenizer, [{"role": "user", "content": canary.prompt()}])


def _continuation(tokenizer: Any, canary: Canary, task: str, secret: str) -> list[int]:
    text = canary.answer(secret) if task_spec(task).chat_template else f" {secret}."
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _ranked(model: Any, tokenizer: Any, canary: Canary, task: str, cfg: Canaries, rng: random.Random) -> dict:
    """The secret's log-likelihood ranked among `cfg.candidates` random secrets (ties count against it)."""
    import torch

    from tunelab.evaluation.forgetting import continuation_logliks

    secrets = [canary.secret]
    while len(secrets) < cfg.candidates + 1:
        candidate = random_secret(rng, cfg.digits)
        if candidate != canary.secret:
            secrets.append(candidate)
    context = _context(tokenizer, canary, task)
    items = [(context, _continuation(tokenizer, canary, task, s)) for s in secrets]
    with torch.no_grad():
        scores = [
            value
            for start in range(0, len(items), BATCH)
            for value in continuation_logliks(model, tokenizer, items[start : start + BATCH])
        ]
    rank = 1 + sum(1 for value in scores[1:] if value >= scores[0])
    return {
        "name": canary.name,
        "repetitions": canary.repetitions,
        "rank": rank,
        "exposure": math.log2(cfg.candidates + 1) - math.log2(rank),
        "loglik": scores[0],
    }


def _by_repetitions(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["repetitions"]].append(row)
    return {
        str(n): {
            "mean_exposure": sum(r["exposure"] for r in group) / len(group),
            "extracted": sum(1 for r in group if r["extracted"]),
            "canaries": len(group),
        }
        for n, group in sorted(groups.items())
    }


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """The run's metrics: mean exposure per repetition count (r0: the controls) and the secrets recited."""
    by = result["by_repetitions"]
    values = {f"canary_exposure_r{n}": group["mean_exposure"] for n, group in by.items()}
    values["canary_extracted"] = float(sum(group["extracted"] for n, group in by.items() if n != "0"))
    return values


def describe_audit(result: dict[str, Any]) -> str:
    by = ", ".join(
        f"{'control' if n == '0' else n + 'x'} {g['mean_exposure']:.2f}"
        for n, g in result["by_repetitions"].items()
    )
    recited = sum(g["extracted"] for n, g in result["by_repetitions"].items() if n != "0")
    return f"canaries: mean exposure (bits, at most {result['max_exposure']:.2f}) {by}; {recited} secrets recited"
