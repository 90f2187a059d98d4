"""The data stage end to end: leakage, PII, splits, packing and the audit trail it leaves."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import REPO, exact, make_recipe, write_jsonl
from tunelab.cli import app
from tunelab.config import Recipe, load_recipe
from tunelab.data.formats import load_split
from tunelab.data.pipeline import load_records
from tunelab.errors import DataError
from tunelab.runner import train

runner = CliRunner()
INTENTS = REPO / "examples" / "data" / "intent_train.jsonl"


def recipe_for(tmp_path: Path, train_rows: list[dict], **data: Any) -> Recipe:
    train_file = write_jsonl(tmp_path / "train.jsonl", train_rows)
    return Recipe.model_validate(
        {
            "name": "data-test",
            "task": "classify",
            "model": {"name": "unused"},
            "data": {"train": str(train_file), **data},
            "method": {"name": "full"},
        }
    )


def intent_rows() -> list[dict]:
    return [json.loads(line) for line in INTENTS.read_text().splitlines()]


def edit(text: str, i: int) -> str:
    """A small edit, as near-duplicates in the wild look: a typo, or one word changed."""
    if i % 2:
        return text.replace("e", "3", 1)
    words = text.split()
    words[len(words) // 2] = "really"
    return " ".join(words)


def long_rows() -> list[dict]:
    """Two support messages of the same intent joined: ~100 characters, like a short review."""
    by_label: dict[str, list[str]] = {}
    for row in intent_rows():
        by_label.setdefault(row["label"], []).append(row["text"])
    return [{"text": f"{a} {b}", "label": label} for label, texts in by_label.items()
            for a, b in zip(texts[::2], texts[1::2], strict=False)][:60]  # fmt: skip


def test_planted_near_duplicates_across_train_and_test_are_dropped_from_train(tmp_path: Path) -> None:
    rows = long_rows()
    planted = [{"text": edit(r["text"], i), "label": r["label"]} for i, r in enumerate(rows[:6])]
    unrelated = {"text": "totally unrelated words about the weather in spring", "label": rows[0]["label"]}
    test_file = write_jsonl(tmp_path / "test.jsonl", [*planted, unrelated])
    recipe = recipe_for(tmp_path, rows, test=str(test_file))  # default threshold 0.8

    records = load_records(recipe)

    leakage = records.report["leakage"]
    assert leakage["overlap"]["test"] == {"exact": 0, "near": 6}
    assert leakage["removed_from_train"] == 6
    kept_texts = {r.text for r in records.splits["train"]}
    assert not any(r["text"] in kept_texts for r in rows[:6])
    assert all(r["text"] in kept_texts for r in rows[6:])
    assert len(records.splits["test"]) == 7  # the held-out side is never edited


def test_leakage_fail_policy_stops_with_examples(tmp_path: Path) -> None:
    rows = intent_rows()[:30]
    test_file = write_jsonl(tmp_path / "test.jsonl", [rows[3]])
    with pytest.raises(DataError, match="1 training row\\(s\\) overlap held-out data") as err:
        load_records(recipe_for(tmp_path, rows, test=str(test_file), leakage="fail"))
    assert "exact-duplicates" in str(err.value)


def test_contamination_files_are_checked_too(tmp_path: Path) -> None:
    rows = intent_rows()[:30]
    bench = write_jsonl(
        tmp_path / "bench.jsonl", [{"text": rows[5]["text"].upper()}]
    )  # same text, other case
    records = load_records(recipe_for(tmp_path, rows, contamination=[str(bench)]))
    assert records.report["leakage"]["overlap"][f"contamination {bench}"] == {"exact": 1, "near": 0}
    assert len(records.splits["train"]) == 29


def test_pii_mask_and_drop_through_the_pipeline(tmp_path: Path) -> None:
    rows = [
        {"text": "mail me at jane.doe@example.com please", "label": "a"},
        {"text": "card 4111 1111 1111 1111 was charged", "label": "b"},
        {"text": "python 3.11.7 released on 2024-01-15 with 12345 fixes", "label": "a"},
        {"text": "server 192.168.1.20 is down", "label": "b"},
        {"text": "nothing personal in this one", "label": "b"},
    ]
    masked = load_records(recipe_for(tmp_path, rows, pii="mask"))
    texts = [r.text for r in masked.splits["train"]]
    assert texts == [
        "mail me at <EMAIL> please",
        "card <CREDIT_CARD> was charged",
        "python 3.11.7 released on 2024-01-15 with 12345 fixes",
        "server <IPV4> is down",
        "nothing personal in this one",
    ]
    assert masked.report["pii"]["train"]["hits"] == {"CREDIT_CARD": 1, "EMAIL": 1, "IPV4": 1}

    dropped = load_records(recipe_for(tmp_path, rows, pii="drop"))
    assert [r.text for r in dropped.splits["train"]] == [rows[2]["text"], rows[4]["text"]]
    assert dropped.report["pii"]["train"]["rows_dropped"] == 3


def proportions(records: list) -> dict[str, float]:
    counts = Counter(r.label for r in records)
    return {label: 100 * n / len(records) for label, n in counts.items()}


def test_stratified_split_keeps_label_proportions_and_is_seeded(tmp_path: Path) -> None:
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(500)]
    labels = ["a"] * 250 + ["b"] * 150 + ["c"] * 100
    rows = [{"text": " ".join(rng.sample(vocabulary, 8)), "label": label} for label in labels]
    recipe = recipe_for(
        tmp_path, rows, split={"validation": 0.2, "test": 0.1}, dedup=False, near_dedup={"enabled": False}
    )

    first = load_records(recipe)
    again = load_records(recipe)
    other = load_records(recipe.model_copy(update={"train": recipe.train.model_copy(update={"seed": 7})}))

    overall = {"a": 50.0, "b": 30.0, "c": 20.0}
    assert {s: len(v) for s, v in first.splits.items()} == {"validation": 100, "test": 50, "train": 350}
    for split in ("train", "validation", "test"):
        for label, share in proportions(first.splits[split]).items():
            assert abs(share - overall[label]) <= 1.0, (split, label, share)
    for split in first.splits:
        assert [r.source for r in first.splits[split]] == [r.source for r in again.splits[split]]
    assert [r.source for r in first.splits["test"]] != [r.source for r in other.splits["test"]]


@exact
def test_packed_training_gives_the_same_loss_and_weights_as_unpacked(
    tmp_path: Path, tiny_llama: Path
) -> None:
    # One step over all 8 examples: packed rows and padded examples hold the same targets, and the
    # loss is normalised by targets, so loss and update must agree.
    results = {}
    for packing in (False, True):
        folder = tmp_path / str(packing)
        folder.mkdir()
        recipe = make_recipe(folder, tiny_llama, "sft", train={"batch_size": 8, "grad_accum": 1, "max_steps": 1,
                                                              "packing": packing, "max_seq_len": 128})  # fmt: skip
        results[packing] = train(load_recipe(recipe))
    losses = {}
    for packing, result in results.items():
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        losses[packing] = next(json.loads(line)["loss"] for line in lines if '"loss"' in line)
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    report = json.loads((results[True].run_dir / "data" / "report.json").read_text())
    assert report["packing"]["examples"] == 8 and report["packing"]["rows"] < 8
    unpacked = load_file(results[False].run_dir / "final" / "adapter_model.safetensors")
    packed = load_file(results[True].run_dir / "final" / "adapter_model.safetensors")
    for name, tensor in unpacked.items():
        torch.testing.assert_close(packed[name], tensor, atol=1e-5, rtol=0, msg=name)


def test_a_run_writes_what_it_trains_on_and_the_report(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 1})
    run_dir = train(load_recipe(recipe)).run_dir
    data_dir = run_dir / "data"
    report = json.loads((data_dir / "report.json").read_text())
    assert report["splits"]["train"]["rows"] == 8 and report["records"] == {"train": 8, "validation": 4}
    assert {"normalize", "pii", "dedup", "leakage", "labels", "tokenize"} <= set(report)
    # The written split reads back as the same records.
    again = load_split(data_dir / "train.jsonl").records
    assert [(r.text, r.label) for r in again] == [
        (r["text"], r["label"])
        for r in json.loads("[" + ",".join((tmp_path / "train.jsonl").read_text().splitlines()) + "]")
    ]


def test_data_prepare_writes_cleaned_splits(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify")
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["data", "prepare", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"train.jsonl", "validation.jsonl", "report.json"}
    assert "records: train 8, validation 4" in result.output


def test_data_prepare_prints_the_counts_it_writes(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.conftest import CHATS

    long_prompt = " ".join(["please tell me all about my card and my balance"] * 12)
    too_long = {
        "messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]
    }
    # Cut at its end, the long row loses its answer: 9 rows in, 8 survive tokenisation.
    recipe = make_recipe(tmp_path, tiny_llama, "sft", data={"truncation_side": "end"})
    write_jsonl(tmp_path / "train.jsonl", [too_long, *CHATS])
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["data", "prepare", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = len((out / "train.jsonl").read_text().splitlines())
    assert written == 8
    assert "records: train 8, validation 3 (1 left out at tokenisation, see the notes)" in result.output
    # Cut on its prompt side (the default), it keeps its answer.
    recipe = make_recipe(tmp_path, tiny_llama, "sft")
    write_jsonl(tmp_path / "train.jsonl", [too_long, *CHATS])
    result = runner.invoke(app, ["data", "prepare", str(recipe), "--out", str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "kept" / "train.jsonl").read_text().splitlines()) == 9


def test_skip_counts_bad_rows_in_the_report(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", data={"on_error": "skip"}, train={"max_steps": 1})
    with (tmp_path / "train.jsonl").open("a") as handle:
        handle.write('{"messages": [{"role": "robot", "content": "x"}]}\nnot json\n')
    run_dir = train(load_recipe(recipe)).run_dir
    report = json.loads((run_dir / "data" / "report.json").read_text())
    assert report["splits"]["train"]["bad_rows"] == 2 and report["records"]["train"] == 8
    assert report["splits"]["train"]["bad_examples"][0].endswith(
        "train.jsonl:9: messages[0]: unknown role 'robot'; expected one of system, user, assistant, tool"
    )


def first_loss(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line)["loss"] for line in lines if '"loss"' in line)


def test_a_second_run_reads_the_prepared_data_from_the_cache(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab import runner

    recipe_path = make_recipe(tmp_path, tiny_llama, "sft", train={"max_steps": 2})
    first = train(load_recipe(recipe_path))

    def no_data_work(recipe, **_):
        raise AssertionError("the data stage ran although its result was cached")

    monkeypatch.setattr(runner, "load_records", no_data_work)
    second = train(load_recipe(recipe_path))
    assert first_loss(second.run_dir) == first_loss(first.run_dir)
    for name in ("train.jsonl", "validation.jsonl", "report.json"):
        assert (second.run_dir / "data" / name).read_text() == (first.run_dir / "data" / name).read_text()
    assert json.loads((second.run_dir / "final" / "tunelab.json").read_text())["chat_template"] == "chatml"

    # Any change to what the data stage depends on is a miss: a setting ...
    with pytest.raises(AssertionError, match="the data stage ran"):
        train(load_recipe(recipe_path, ["train.max_seq_len=48"]))
    # ... or a byte of a data file.
    with (tmp_path / "train.jsonl").open("a") as handle:
        handle.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "new"}, {"role": "assistant", "content": "row"}]}
            )
            + "\n"
        )
    with pytest.raises(AssertionError, match="the data stage ran"):
        train(load_recipe(recipe_path))


HOUSE_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)


def test_a_chat_template_file_is_trained_with_saved_with_the_model_and_keys_the_cache(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab import runner

    template = tmp_path / "house.jinja"
    template.write_text(HOUSE_TEMPLATE, encoding="utf-8")
    recipe_path = make_recipe(
        tmp_path, tiny_llama, "sft", data={"template": str(template)}, train={"max_steps": 1}
    )
    result = train(load_recipe(recipe_path))

    report = json.loads((result.run_dir / "data" / "report.json").read_text())
    assert report["tokenize"]["template"] == str(template)
    final = result.run_dir / "final"
    assert json.loads((final / "tunelab.json").read_text())["chat_template"] == str(template)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(final).chat_template == HOUSE_TEMPLATE  # inference renders alike

    monkeypatch.setattr(
        runner, "load_records", lambda recipe, **_: (_ for _ in ()).throw(AssertionError("ran"))
    )
    train(load_recipe(recipe_path))  # same bytes: a cache hit
    template.write_text(HOUSE_TEMPLATE.replace("': '", "'> '"), encoding="utf-8")
    with pytest.raises(AssertionError, match="ran"):
        train(load_recipe(recipe_path))  # the template's bytes changed: a miss


def test_a_chat_template_file_with_a_syntax_error_is_named_by_file_and_line(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from tunelab.errors import RecipeError

    template = tmp_path / "broken.jinja"
    template.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", encoding="utf-8")
    recipe_path = make_recipe(tmp_path, tiny_llama, "sft", data={"template": str(template)})
    with pytest.raises(RecipeError, match=rf"data.template: .*{template}:2: not a valid Jinja template"):
        load_recipe(recipe_path)
    recipe_path = make_recipe(tmp_path, tiny_llama, "sft", data={"template": "chatml2"})
    with pytest.raises(RecipeError, match="'chatml2' is neither a built-in template"):
        load_recipe(recipe_path)


def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path, tiny_bert: Path) -> None:
    recipe_path = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 1})
    train(load_recipe(recipe_path))
    (entry,) = (tmp_path / "runs" / ".cache" / "data").iterdir()
    (entry / "prepared.json").write_text("{not json", encoding="utf-8")
    result = train(load_recipe(recipe_path))
    assert result.summary.status == "completed"
    assert json.loads((entry / "prepared.json").read_text())["label_map"] == {
        "balance": 0,
        "card": 1,
        "transfer": 2,
    }


def test_sample_takes_the_same_seeded_rows_and_says_so(tmp_path: Path) -> None:
    rows = intent_rows()[:60]
    recipe = recipe_for(tmp_path, rows, sample=10)
    first, again = load_records(recipe), load_records(recipe)
    texts = [r.text for r in first.splits["train"]]
    assert len(texts) == 10 and texts == [r.text for r in again.splits["train"]]
    order = [r["text"] for r in rows]
    assert [order.index(t) for t in texts] == sorted(order.index(t) for t in texts)  # file order kept
    assert first.report["sample"] == {"from": 60, "kept": 10, "seed": 42}


def test_leakage_names_with_colons_are_kept_whole() -> None:
    # Held-out names carry file paths and hf: ids, both of which may contain ':'.
    from tunelab.data.clean import NearDupConfig
    from tunelab.data.quality import leakage
    from tunelab.data.records import Labeled

    train_rows = [Labeled("lost my card please block it", "card", source="t.jsonl:1"),
                  Labeled("what is my balance today", "balance", source="t.jsonl:2")]  # fmt: skip
    held = {"contamination hf:org/bench": [Labeled("LOST my card   please block it", "card", source="b:7")]}
    kept, step = leakage(train_rows, held, near=NearDupConfig(), policy="drop")
    assert [r.source for r in kept] == ["t.jsonl:2"]
    assert step["overlap"] == {"contamination hf:org/bench": {"exact": 1, "near": 0}}
    assert step["examples"] == [{"train": "t.jsonl:1", "overlaps": "b:7", "kind": "exact"}]


def test_the_few_shot_baseline_is_the_same_on_a_cache_hit(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.conftest import CHATS, VAL_CHATS

    # One training conversation loses every answer token to max_seq_len and is dropped at tokenisation:
    # the cache keeps only the rows that survive, so a fresh run must draw its shots from those too.
    long_prompt = " ".join(["please tell me all about my card and my balance"] * 12)
    too_long = {
        "messages": [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]
    }
    recipe_path = make_recipe(
        tmp_path, tiny_llama, "sft", data={"truncation_side": "end"}, train={"max_steps": 1}
    )
    write_jsonl(tmp_path / "train.jsonl", [too_long, *CHATS])
    test = write_jsonl(tmp_path / "test.jsonl", VAL_CHATS)
    overrides = [f"data.test={test}", "eval.few_shot_k=3"]
    first = train(load_recipe(recipe_path, overrides))
    second = train(load_recipe(recipe_path, overrides))  # from the data cache
    report = json.loads((first.run_dir / "data" / "report.json").read_text())
    assert json.dumps(report).count("no_targets") >= 1  # the long row was dropped at tokenisation
    assert second.summary.baselines == first.summary.baselines


def test_integer_labels_get_their_names_from_data_label_names(tmp_path: Path, tiny_bert: Path) -> None:
    from tests.conftest import LABELED, VAL_LABELED

    ids = {"balance": 0, "card": 1, "transfer": 2}
    write_jsonl(tmp_path / "train_ids.jsonl", [{**r, "label": ids[r["label"]]} for r in LABELED])
    write_jsonl(tmp_path / "val_ids.jsonl", [{**r, "label": ids[r["label"]]} for r in VAL_LABELED])
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"max_steps": 1})
    files = [f"data.train={tmp_path / 'train_ids.jsonl'}", f"data.validation={tmp_path / 'val_ids.jsonl'}"]

    bare = train(load_recipe(recipe, files))
    assert json.loads((bare.run_dir / "final" / "labels.json").read_text()) == {"0": 0, "1": 1, "2": 2}
    assert "bare ids" in bare.summary.baselines["zero_shot"]["note"]  # said plainly, not hidden

    named = train(load_recipe(recipe, [*files, "data.label_names={0: balance, 1: card, 2: transfer}"]))
    assert json.loads((named.run_dir / "final" / "labels.json").read_text()) == ids
    assert "note" not in named.summary.baselines["zero_shot"]
    trained_on = [json.loads(line)["label"] for line in (named.run_dir / "data" / "train.jsonl").open()]
    assert set(trained_on) == set(ids)

    with pytest.raises(DataError, match=r"label\(s\) '2' have no name in data.label_names"):
        load_records(load_recipe(recipe, [*files, "data.label_names={0: balance, 1: card}"]))
