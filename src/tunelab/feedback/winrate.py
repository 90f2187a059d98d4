"""`tunelab compare-models A B`: how often A's answer beats B's on a set of (held-out) prompts.

Two judges, in this order:
1. Ratings in the feedback store of pairs of A's and B's answers to these prompts: a win counts 1,
   a tie or "both bad" 0.5, a loss 0 (a rater who finds both bad prefers neither).
2. Otherwise a reward model run (`--reward`, task reward): one greedy answer per prompt from each
   model, both scored; the higher score wins. The result says it was judged by that model, not by
   people: a reward model has its own blind spots (length, style), which ratings do not share.

The 95% interval is a percentile bootstrap that resamples prompts (with every judgement of a
resampled prompt), since ratings of one prompt are not independent of each other.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.data.inputs import PredictInput
from tunelab.data.records import Chat, Message
from tunelab.data.templates import render_chat
from tunelab.errors import TunelabError
from tunelab.evaluation.settings import DataSettings
from tunelab.feedback.sample import (
    Messages,
    Settings,
    against_spec,
    default_database,
    generate_samples,
    model_id,
    read_prompts,
)
from tunelab.feedback.store import FeedbackStore, prompt_key
from tunelab.inference import predict_scores, to_best_device
from tunelab.models.restore import find_final, load_run_or_base, load_trained
from tunelab.tasks.registry import task_spec

POINTS = {"win": 1.0, "tie": 0.5, "both_bad": 0.5, "loss": 0.0}


def bootstrap_ci(
    points_by_prompt: list[list[float]], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean point, resampling prompts with replacement."""
    if n_boot < 1 or not points_by_prompt:
        raise TunelabError(f"a bootstrap needs --n-boot >= 1 and at least one prompt (got {n_boot})")
    sums = np.array([sum(points) for points in points_by_prompt], dtype=float)
    counts = np.array([len(points) for points in points_by_prompt], dtype=float)
    draws = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    rates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(low), float(high)


def summarise(outcomes_by_prompt: list[list[str]], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Win-rate, its interval, and the counts, from each prompt's outcomes (win/tie/both_bad/loss)."""
    points = [[POINTS[o] for o in outcomes] for outcomes in outcomes_by_prompt]
    counts = Counter(o for outcomes in outcomes_by_prompt for o in outcomes)
    total = sum(counts.values())
    low, high = bootstrap_ci(points, n_boot=n_boot, seed=seed)
    return {
        "win_rate": sum(map(sum, points)) / total,
        "ci95": [low, high],
        "n_prompts": len(points),
        "n_judgements": total,
        "wins": counts["win"],
        "ties": counts["tie"],
        "both_bad": counts["both_bad"],
        "losses": counts["loss"],
        "n_boot": n_boot,
        "seed": seed,
    }


def _outcome(choice: str, a_is_first: bool) -> str:
    """A stored verdict (a/b/tie/both_bad on the pair's order) from model A's side."""
    if choice in ("tie", "both_bad"):
        return choice
    return "win" if (choice == "a") == a_is_first else "loss"


def rated_outcomes(
    store: FeedbackStore, a: str, b: str, prompts: list[Messages]
) -> tuple[dict[str, list[str]], set[str]]:
    """Each prompt's outcomes from ratings of A-against-B pairs, keyed by prompt, and the raters."""
    wanted = {prompt_key(p) for p in prompts}
    outcomes: dict[str, list[str]] = {}
    raters: set[str] = set()
    for rating in store.ratings():
        models = (rating["a"]["model"], rating["b"]["model"])
        if rating["prompt_key"] not in wanted or set(models) != {a, b}:
            continue
        outcomes.setdefault(rating["prompt_key"], []).append(_outcome(rating["choice"], models[0] == a))
        raters.add(rating["rater"])
    return outcomes, raters


def reward_scores(reward: str | Path, prompts: list[Messages], answers: list[str]) -> list[float]:
    """The reward model's score of each answer, the conversation rendered as its training rendered it
    (prompt plus answer as the last assistant turn, data/pairs.py)."""
    trained = to_best_device(load_trained(reward))
    if task_spec(trained.task).head.outputs != "score":
        raise TunelabError(f"--reward {reward}: a {trained.task} run, not a reward model (task: reward)")
    texts = []
    for messages, answer in zip(prompts, answers, strict=True):
        turns = (*(Message(m["role"], m["content"]) for m in messages), Message("assistant", answer))
        texts.append(PredictInput(text=render_chat(trained.tokenizer, Chat(messages=turns))[0]))
    max_seq_len = DataSettings.of_run(trained.recipe_dir).max_seq_len
    return [row["score"] for row in predict_scores(trained, texts, batch_size=8, max_seq_len=max_seq_len)]


def _greedy(spec: str, prompts: list[Messages], max_new_tokens: int) -> list[str]:
    trained = to_best_device(load_run_or_base(spec))
    settings = Settings(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    return [s.text for s in generate_samples(trained, model_id(spec), prompts, settings)]


def judged_by_reward(
    specs: tuple[str, str], reward: str | Path, prompts: list[Messages], max_new_tokens: int
) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """One greedy answer per prompt from each model, scored by the reward model; A's outcome per prompt."""
    answers = [_greedy(spec, prompts, max_new_tokens) for spec in specs]
    scores = reward_scores(reward, prompts * 2, answers[0] + answers[1])
    half = len(prompts)
    details, outcomes = [], []
    for i, messages in enumerate(prompts):
        score_a, score_b = scores[i], scores[half + i]
        outcome = "win" if score_a > score_b else "loss" if score_a < score_b else "tie"
        outcomes.append([outcome])
        details.append(
            {
                "prompt": messages,
                "a": answers[0][i],
                "b": answers[1][i],
                "score_a": score_a,
                "score_b": score_b,
                "outcome": outcome,
            }
        )
    return outcomes, details


def _database(a: str, b: str, database: Path | None) -> Path | None:
    if database is not None:
        return database
    for spec in (a, b):
        if find_final(spec) is not None:
            try:
                return default_database(spec)
            except TunelabError:
                continue  # an export outside a runs folder: try the other model
    return None


def compare_models(
    a: str,
    b: str,
    prompts_file: str | Path,
    *,
    database: Path | None = None,
    reward: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    max_new_tokens: int = 128,
) -> dict[str, Any]:
    """A's win-rate over B on the prompts: from ratings in the store where there are any, else from
    the reward model; refuses when neither exists."""
    b = against_spec(a, b)  # "base": A's own base model
    prompts = list({repr(p): p for p in read_prompts(prompts_file)}.values())
    ids = (model_id(a), model_id(b))
    database = _database(a, b, database)
    rated: dict[str, list[str]] = {}
    raters: set[str] = set()
    if database is not None and database.is_file():
        rated, raters = rated_outcomes(FeedbackStore(database), *ids, prompts)
    result: dict[str, Any] = {
        "a": ids[0],
        "b": ids[1],
        "prompts_file": str(prompts_file),
        "prompts": len(prompts),
    }
    if rated:
        names = ", ".join(sorted(raters))
        result |= {
            "judge": "ratings",
            "database": str(database),
            "raters": sorted(raters),
            "judged_by": f"{len(raters)} rater(s) in the feedback store: {names}",
            "prompts_without_ratings": len(prompts) - len(rated),
        }
        return result | summarise(list(rated.values()), n_boot=n_boot, seed=seed)
    if reward is None:
        where = (
            f"in {database}" if database is not None else "(no --db, and neither model is in a runs folder)"
        )
        raise TunelabError(
            f"nothing to judge {ids[0]} against {ids[1]} with: no ratings of their answers to these prompts "
            f"{where}, and no --reward model",
            fix=f"rate pairs first (tunelab sample {a} --against {b} --prompts {prompts_file}, then the "
            "dashboard), or pass --reward RUN (a task: reward run)",
        )
    outcomes, details = judged_by_reward((a, b), reward, prompts, max_new_tokens)
    result |= {
        "judge": "reward_model",
        "reward_model": str(reward),
        "judged_by": f"reward model {reward}, not by people",
    }
    return result | summarise(outcomes, n_boot=n_boot, seed=seed) | {"details": details}
