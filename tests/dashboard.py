"""Helpers for the dashboard's tests and its screenshots (`make screenshots`): a serve root holding two
real tiny runs and a set of blind pairs to rate, and a logged-in HTTP client.

The runs are trained for real (tiny Llama, a few steps) into <root>/runs, where `tunelab serve --root`
reads its registry; the pairs are stored through the feedback store, as `tunelab sample` stores them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the openai client's own HTTP library

from tests.conftest import make_recipe
from tunelab.config import load_recipe
from tunelab.feedback.store import FeedbackStore, Sample, pair_samples
from tunelab.runner import train
from tunelab.serving.config import ServeConfig

# Five prompts, each answered by two "models": distinct texts, so the export's dedup keeps them all.
PROMPTS = ["How do I reset my password?", "What is the capital of France?", "Give me a synonym for quick.",
           "How many legs does a spider have?", "Name a primary colour."]  # fmt: skip
ANSWERS = {
    "run-a": ["Open settings, choose Security, then Reset password.", "Paris.", "Fast.", "Eight.", "Red."],
    "run-b": ["I cannot help with passwords.", "It is Lyon, I think.", "Slow.", "Six legs.", "Purple?"],
}


# The two runs' own settings. The first scores generated answers (eval.metrics: its main metric is exact
# match); the second logs and validates as a default recipe does (every 10 and 100 steps), so its 4 steps
# leave one train loss and one validation loss, both at step 4: the shortest loss curve there is.
RUNS = (
    {"train": {"max_steps": 4, "eval_every": 2, "lr": 1e-2},
     "eval": {"metrics": ["exact_match", "rouge"], "max_new_tokens": 6}},
    {"train": {"max_steps": 4, "eval_every": 100, "log_every": 10, "lr": 3e-3}},
)  # fmt: skip


def train_runs(root: Path, model: Path) -> list[Path]:
    """Two tiny sft runs in <root>/runs (RUNS) that differ in train.lr (what Compare must highlight).
    Both score the base model's zero- and few-shot baselines first (eval.baselines' default)."""
    runs = []
    for i, sections in enumerate(RUNS):
        folder = root / f"recipe-{i}"
        folder.mkdir(parents=True)
        recipe = make_recipe(folder, model, "sft", **sections, output={"dir": str(root / "runs")})
        runs.append(train(load_recipe(recipe)).run_dir)
    return runs


def seed_pairs(config: ServeConfig) -> list[str]:
    """Store PROMPTS' candidates from two models and pair them: one blind pair per prompt."""
    store = FeedbackStore(config.database)
    samples = [
        Sample(prompt=[{"role": "user", "content": prompt}], model=model, text=answers[i], temperature=0.8,
               top_p=0.95, max_new_tokens=32, seed=i)
        for model, answers in ANSWERS.items() for i, prompt in enumerate(PROMPTS)
    ]  # fmt: skip
    store.add_samples(samples)
    return store.add_pairs(pair_samples(samples))


def login(base: str, key: str, rater: str = "") -> httpx.Client:
    """An HTTP client with a dashboard session (the login form, as a browser fills it in)."""
    http = httpx.Client(base_url=base, follow_redirects=False, timeout=60)
    form = http.get("/login")
    token = csrf_of(form.text)
    answer = http.post("/login", data={"key": key, "rater": rater, "csrf": token, "next": "/runs"})
    assert answer.status_code == 303 and answer.headers["location"] == "/runs", answer.text
    return http


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def forms(html: str) -> list[dict[str, Any]]:
    """Each <form> of a page: its method, action and the names of its hidden inputs."""
    found = []
    for attrs, body in re.findall(r"<form([^>]*)>(.*?)</form>", html, flags=re.S):
        method = re.search(r'method="(\w+)"', attrs)
        action = re.search(r'action="([^"]*)"', attrs)
        found.append({"method": (method.group(1) if method else "get").lower(),
                      "action": action.group(1) if action else "",
                      "hidden": re.findall(r'type="hidden" name="(\w+)"', body)})  # fmt: skip
    return found
