"""compare-models without a model: the bootstrap, and win-rates from ratings in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.errors import TunelabError
from tunelab.feedback.store import FeedbackStore, Sample
from tunelab.feedback.winrate import bootstrap_ci, compare_models, summarise


def test_eight_wins_of_ten_is_a_win_rate_of_0_8_inside_its_interval() -> None:
    outcomes = [["win"]] * 8 + [["loss"]] * 2
    result = summarise(outcomes, n_boot=2000, seed=0)
    low, high = result["ci95"]
    assert result["win_rate"] == pytest.approx(0.8)
    assert low < 0.8 < high and low > 0.4 and high == 1.0
    assert (result["wins"], result["losses"], result["ties"], result["n_prompts"]) == (8, 2, 0, 10)
    assert summarise(outcomes, n_boot=2000, seed=0)["ci95"] == [low, high]  # seeded


def test_ties_and_both_bad_count_half_and_prompts_are_resampled_whole() -> None:
    result = summarise([["win", "tie"], ["both_bad", "loss"]], n_boot=500, seed=0)
    assert result["win_rate"] == pytest.approx(0.5)
    assert result["n_judgements"] == 4
    # resampling the two prompts gives exactly three rates: 0.75, 0.5, 0.25
    low, high = bootstrap_ci([[1.0, 0.5], [0.5, 0.0]], n_boot=500, seed=0)
    assert (low, high) == (0.25, 0.75)
    assert bootstrap_ci([[1.0]] * 5, n_boot=100) == (1.0, 1.0)


def _rated(tmp_path: Path, verdicts: list[str]) -> tuple[Path, Path]:
    """Prompts i with a pair of base:x (a or b, alternating) against base:y and the verdict for x."""
    db = tmp_path / "registry.sqlite"
    store = FeedbackStore(db)
    prompts = []
    for i, verdict in enumerate(verdicts):
        prompt = [{"role": "user", "content": f"question {i}"}]
        prompts.append({"messages": prompt})
        x, y = Sample(prompt, "base:x", "x", 0, 1, 8, 0), Sample(prompt, "base:y", "y", 0, 1, 8, 0)
        first, second = (x, y) if i % 2 else (y, x)  # x stored as a on odd prompts, as b on even ones
        store.add_samples([first, second])
        (pair,) = store.add_pairs([(first.id, second.id)])
        choice = {"win": "left" if first is x else "right", "loss": "right" if first is x else "left"}
        store.rate(pair, "alice", left_id=first.id, choice=choice.get(verdict, verdict))
    return db, write_jsonl(tmp_path / "prompts.jsonl", prompts)


def test_ratings_judge_when_they_exist(tmp_path: Path) -> None:
    db, prompts = _rated(tmp_path, ["win"] * 6 + ["loss", "tie", "both_bad", "win"])
    result = compare_models("x", "y", prompts, database=db, n_boot=200)
    assert (result["judge"], result["a"], result["b"]) == ("ratings", "base:x", "base:y")
    assert (result["wins"], result["losses"], result["ties"], result["both_bad"]) == (7, 1, 1, 1)
    assert result["win_rate"] == pytest.approx(0.8)
    assert "alice" in result["judged_by"]
    assert compare_models("y", "x", prompts, database=db, n_boot=200)["win_rate"] == pytest.approx(0.2)


def test_only_the_given_prompts_are_judged(tmp_path: Path) -> None:
    db, _ = _rated(tmp_path, ["win", "loss", "win"])
    some = write_jsonl(tmp_path / "some.jsonl", [{"prompt": "question 1"}, {"prompt": "question 9"}])
    result = compare_models("x", "y", some, database=db, n_boot=50)
    assert (result["n_prompts"], result["losses"], result["prompts_without_ratings"]) == (1, 1, 1)


def test_no_ratings_and_no_reward_model_is_refused(tmp_path: Path) -> None:
    db, prompts = _rated(tmp_path, ["win"])
    with pytest.raises(TunelabError, match=r"no ratings .* and no --reward") as refused:
        compare_models("x", "z", prompts, database=db)
    assert "--reward RUN" in (refused.value.fix or "")
