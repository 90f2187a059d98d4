"""eval.bias: identity terms against labels in the data, and the Jigsaw subgroup AUCs of a classifier,
checked against hand-computed values; both in eval.json and the report, with warnings past the gap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_recipe, write_jsonl
from tunelab.config import load_recipe
from tunelab.config.safety import BiasConfig
from tunelab.errors import RecipeError
from tunelab.evaluation.bias import data_bias, mentions, model_bias
from tunelab.runner import train


def test_terms_match_whole_words_in_any_case() -> None:
    found = mentions(
        ["A Muslim family", "muslims pray", "Islamabad", "the gay pride", "Gaylord"],
        {"m": ["muslim", "muslims"], "g": ["gay"]},
    )
    assert found == {"m": [True, True, False, False, False], "g": [False, False, False, True, False]}


def test_data_bias_gives_p_label_given_a_mention_and_warns_past_the_gap() -> None:
    texts = [
        "gay people",
        "the gay bar",
        "my gay friend",
        "a gay film",
        "nice day",
        "bad day",
        "ok day",
        "fine day",
    ]
    labels = ["toxic", "toxic", "toxic", "ok", "ok", "ok", "ok", "toxic"]
    result = data_bias(texts, labels, BiasConfig(terms={"lgbtq": ["gay"]}, min_mentions=4, max_gap=0.2))
    assert result["p_label"] == {"ok": 0.5, "toxic": 0.5}
    (row,) = [g for g in result["subgroups"] if g["subgroup"] == "lgbtq"]
    assert row["rows"] == 4 and row["p_label"] == {"ok": 0.25, "toxic": 0.75}
    assert row["largest_gap"] == pytest.approx(0.25) and row["gap_label"] == "toxic"  # the over-represented
    assert result["warnings"] == [
        "train: rows mentioning lgbtq (4) are labelled toxic 75% of the time against 50% overall"
    ]
    quiet = data_bias(texts, labels, BiasConfig(terms={"lgbtq": ["gay"]}, min_mentions=5, max_gap=0.2))
    assert quiet["warnings"] == []  # too few rows to warn on


def test_subgroup_bpsn_and_bnsp_aucs_equal_their_definitions() -> None:
    # 4 rows mention the subgroup (s), 4 do not (b). Scores: the subgroup's negatives score high.
    texts = ["s one", "s two", "s three", "s four", "b one", "b two", "b three", "b four"]
    y_true = [1, 1, 0, 0, 1, 1, 0, 0]
    scores = [0.9, 0.6, 0.8, 0.7, 0.9, 0.8, 0.2, 0.1]
    probs = [[1 - p, p] for p in scores]
    cfg = BiasConfig(terms={"s": ["s"]}, min_mentions=1, max_gap=0.1)
    result = model_bias(texts, y_true, probs, ["neg", "pos"], cfg)
    (s,) = [g for g in result["subgroups"] if g["subgroup"] == "s"]
    # subgroup: pos {0.9, 0.6} against neg {0.8, 0.7}: pairs won 2 of 4
    assert s["subgroup_auc"] == pytest.approx(0.5)
    # BPSN: background pos {0.9, 0.8} against subgroup neg {0.8, 0.7}: 0.9>0.8, 0.9>0.7, 0.8=0.8 (half), 0.8>0.7
    assert s["bpsn_auc"] == pytest.approx(3.5 / 4)
    # BNSP: subgroup pos {0.9, 0.6} against background neg {0.2, 0.1}: all won
    assert s["bnsp_auc"] == pytest.approx(1.0)
    assert s["rows"] == 4 and s["accuracy"] == pytest.approx(2 / 4)  # 0.6 and 0.8/0.7 cut at 0.5
    assert result["positive_label"] == "pos"
    assert any("mentioning s (4): accuracy 0.500" in w for w in result["warnings"])
    assert any("subgroup_auc 0.500" in w for w in result["warnings"])


def test_a_run_reports_bias_in_eval_json_and_the_report(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [
        {"text": f"{who} asked about my balance", "label": "balance"} for who in ("she", "he", "the woman")
    ]
    rows += [
        {"text": f"{who} wants to transfer money", "label": "transfer"} for who in ("he", "the man", "a man")
    ]
    recipe = make_recipe(
        tmp_path,
        tiny_bert,
        "classify",
        train={"max_steps": 2},
        eval={"bias": {"min_mentions": 2, "max_gap": 0.2}},
    )
    write_jsonl(tmp_path / "train.jsonl", rows)
    val = [
        {"text": "her balance, please", "label": "balance"},
        {"text": "he sends ten euros", "label": "transfer"},
    ]
    write_jsonl(tmp_path / "val.jsonl", val)
    result = train(load_recipe(recipe))
    bias = json.loads((result.run_dir / "eval.json").read_text())["bias"]
    female = next(g for g in bias["data"]["subgroups"] if g["subgroup"] == "female")
    assert female["rows"] == 2 and female["p_label"] == {"balance": 1.0, "transfer": 0.0}
    assert any("mentioning female (2) are labelled" in n for n in result.summary.notes)
    assert bias["model"]["split"] == "validation" and bias["model"]["overall"]["rows"] == 2
    report = (result.run_dir / "report.html").read_text()
    assert "identity terms against labels" in report and "BPSN AUC" in report


def test_bias_is_for_classify(tmp_path: Path, tiny_llama: Path) -> None:
    with pytest.raises(RecipeError, match=r"eval\.bias: applies to task: classify only"):
        load_recipe(make_recipe(tmp_path, tiny_llama, "sft", eval={"bias": {}}))
