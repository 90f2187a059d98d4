"""bench/feedback_loop.py's pieces, and the whole loop on tiny models (the SmolLM2 run is the lead's)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from transformers import AutoTokenizer

from tests.conftest import REPO, SHARED_DATA, make_recipe
from tunelab.data.templates import CHATML
from tunelab.feedback.store import FeedbackStore, Sample

HH = SHARED_DATA / "hh_rlhf" / "harmless_base_test.jsonl"
needs_hh = pytest.mark.skipif(not HH.is_file(), reason="the shared HH-RLHF file is not here")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("feedback_loop", REPO / "bench" / "feedback_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hh_rows_split_at_the_last_assistant_turn(bench: ModuleType) -> None:
    row = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: Sure, with what?",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help me\n\nAssistant: No.",
    }
    assert bench.split_hh(row) == {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "help me"},
        ],
        "chosen": "Sure, with what?",
        "rejected": "No.",
    }
    assert bench.split_hh({**row, "rejected": "\n\nHuman: other\n\nAssistant: No."}) is None


@needs_hh
def test_hh_prompts_are_distinct_short_and_end_with_the_user(bench: ModuleType) -> None:
    items = bench.hh_prompts(HH, bench.RATING_START, 20, 300)
    assert len(items) == 20 and len({json.dumps(i["messages"]) for i in items}) == 20
    assert all(i["messages"][-1]["role"] == "user" for i in items)
    assert all(sum(len(m["content"]) for m in i["messages"]) <= 300 for i in items)


def test_the_scripted_rater_prefers_the_answer_closer_to_the_chosen_one(
    bench: ModuleType, tmp_path: Path
) -> None:
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    reference = {"messages": prompt, "chosen": "Mix flour, water and yeast, then bake it.", "rejected": "No."}
    store = FeedbackStore(tmp_path / "db.sqlite")
    close, far = (
        Sample(prompt, "m1", "Mix the flour and yeast, bake.", 1, 1, 8, 0),
        Sample(prompt, "m2", "No.", 1, 1, 8, 0),
    )
    store.add_samples([far, close])
    store.add_pairs([(far.id, close.id)])
    clicks = bench.ScriptedRater([reference]).rate_all(store)
    (rating,) = store.ratings()
    assert rating["choice"] == "b" and rating["b"]["model"] == "m1"  # the close one, stored as b
    assert rating["rater"] == bench.RATER and "not a human" in bench.RATER
    assert sum(clicks.values()) == 1


@needs_hh
def test_the_loop_runs_end_to_end_on_tiny_models(bench: ModuleType, tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "chat-llama"
    shutil.copytree(tiny_llama, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(model)
    fast = {"max_steps": 2, "eval_every": 1000, "save_every": 1000, "log_every": 1, "batch_size": 2}
    for folder in ("sft", "dpo"):
        (tmp_path / folder).mkdir()
    sft = make_recipe(tmp_path / "sft", model, "sft", train=fast)
    data = {"train": "set-by-the-bench.jsonl", "validation": None}
    dpo = make_recipe(tmp_path / "dpo", model, "preference", data=data, train=fast)
    out = tmp_path / "result.json"
    bench.main([
        "--sft-recipe", str(sft), "--dpo-recipe", str(dpo), "--model", str(model), "--prompts", "4",
        "--held-out", "3", "--max-new-tokens", "4", "--max-prompt-chars", "120", "--work", str(tmp_path / "work"),
        "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["rater_is_human"] is False
    assert (result["rating_prompts"], result["samples"], result["pairs"]) == (4, 8, 4)
    compare = result["compare"]
    assert (
        compare["judge"] == "ratings" and compare["n_prompts"] == 3 and "not a human" in compare["judged_by"]
    )
    assert compare["ci95"][0] <= compare["win_rate"] <= compare["ci95"][1]
