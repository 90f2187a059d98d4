"""eval.canaries: canaries go into train (and only train) at their repetition counts, exposure is the
Secret Sharer's rank measure, and a canary a model has seen many times is exposed where a control is not."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_recipe
from tunelab.config import load_recipe
from tunelab.config.safety import Canaries
from tunelab.data.canaries import make_canaries
from tunelab.data.pipeline import load_records
from tunelab.errors import RecipeError
from tunelab.evaluation import canaries as audit_module
from tunelab.runner import train


def test_canaries_go_into_train_at_their_counts_and_controls_nowhere(
    tmp_path: Path, tiny_llama: Path
) -> None:
    cfg = {"repetitions": [1, 4], "per_repetition": 2}
    records = load_records(load_recipe(make_recipe(tmp_path, tiny_llama, "sft", eval={"canaries": cfg})))
    sources = [r.source for r in records.splits["train"] if r.source.startswith("canary:")]
    assert len(sources) == 2 * 1 + 2 * 4 and records.report["canaries"]["rows_added"] == 10
    canaries = make_canaries(Canaries(**cfg))
    assert [c.repetitions for c in canaries] == [1, 1, 4, 4, 0, 0]  # the last group: controls
    for canary in canaries:
        copies = [s for s in sources if s.startswith(f"canary:{canary.name}#")]
        assert len(copies) == canary.repetitions
    held_out = [r for split in ("validation",) for r in records.splits[split]]
    assert not any(r.source.startswith("canary:") for r in held_out)
    answers = {m.content for r in records.splits["train"] for m in r.messages if m.role == "assistant"}
    assert canaries[2].answer() in answers and canaries[4].answer() not in answers


def test_exposure_is_the_log_rank_among_the_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The true secret is scored first; its rank among 20 candidates sets the exposure."""
    cfg = Canaries(repetitions=[1], per_repetition=1, candidates=20)
    canary = make_canaries(cfg)[0]

    def scores(true_score: float) -> Any:
        return lambda model, tokenizer, items: [
            true_score if i == 0 else -float(i) for i, _ in enumerate(items)
        ]

    import random

    for true_score, rank in [(0.0, 1), (-5.5, 6), (-100.0, 21)]:
        monkeypatch.setattr("tunelab.evaluation.forgetting.continuation_logliks", scores(true_score))
        monkeypatch.setattr(audit_module, "BATCH", 1000)  # one call sees every candidate in order
        row = audit_module._ranked(None, _FakeTokenizer(), canary, "pretrain", cfg, random.Random(0))
        assert row["rank"] == rank
        assert row["exposure"] == pytest.approx(math.log2(21) - math.log2(rank))


class _FakeTokenizer:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_a_canary_seen_many_times_is_exposed_and_recited_and_a_control_is_not(
    tmp_path: Path, tiny_llama: Path
) -> None:
    # A tiny random Llama trained in full, hard, on the 8 chats and the canaries: the 12-times canary is
    # learned by heart; the control (never seen) ranks like any random secret.
    canaries = {"repetitions": [12], "per_repetition": 1, "digits": 4, "candidates": 100, "seed": 1}
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        method={"name": "full"},
        train={
            "epochs": 30,
            "batch_size": 4,
            "grad_accum": 1,
            "lr": 3e-3,
            "eval_every": 1000,
            "save_every": 1000,
        },
        eval={"canaries": canaries, "baselines": []},
    )
    result = train(load_recipe(recipe))
    metrics = result.summary.metrics
    assert metrics["canary_exposure_r12"] == pytest.approx(math.log2(101))  # ranked first
    assert metrics["canary_exposure_r0"] < 5
    assert metrics["canary_extracted"] == 1.0
    report = (result.run_dir / "report.html").read_text()
    assert "Memorisation audit" in report and "never (control)" in report


def test_canaries_are_for_generative_tasks(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", eval={"canaries": {"repetitions": [0, 2, 2]}})
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    message = str(caught.value)
    assert "eval.canaries.repetitions" in message and "distinct counts of 1 or more" in message
    recipe = make_recipe(tmp_path, tiny_bert, "classify", eval={"canaries": {}})
    with pytest.raises(RecipeError, match="is for task sft or pretrain"):
        load_recipe(recipe)
