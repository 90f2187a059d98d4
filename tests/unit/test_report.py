"""report.html: every section the run has, and only those, in its links; self-contained (no network),
escaped, and written atomically."""

from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tunelab.runs.report import OPTIONAL, SECTIONS, write_report

MISSING = "not available for this run"
CORE = [s for s in SECTIONS if s not in OPTIONAL]  # on every report, saying so when their data is missing
VOID = {"img", "br", "meta", "hr", "input", "link", "source", "wbr"}


class Page(HTMLParser):
    """Ids, every src/href, the images and the text of each section (by the nearest enclosing id)."""

    def __init__(self, html: str):
        super().__init__()
        self.stack: list[str | None] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.text: dict[str, str] = {}
        self.feed(html)

    def _section(self) -> str:
        return next((i for i in reversed(self.stack) if i in SECTIONS), "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.ids.append(values["id"])
        self.links += [values[name] for name in ("src", "href") if name in values]
        if tag == "img":
            self.images.setdefault(self._section(), []).append(values["src"])
        if tag not in VOID:
            self.stack.append(values.get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        section = self._section()
        self.text[section] = f"{self.text.get(section, '')} {data}"  # a space between cells


def _png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :], validate=True)


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")


def _summary(**changes: Any) -> dict[str, Any]:
    summary = {
        "name": "intent-lora",
        "task": "classify",
        "method": "lora",
        "model": "models/minilm",
        "run_dir": "runs/intent-lora-20261122-101857",
        "status": "completed",
        "started_at": "2026-11-22T10:18:57+0000",
        "finished_at": "2026-11-22T10:19:30+0000",
        "steps": 40,
        "total_steps": 40,
        "tokens": 8000,
        "wall_s": 32.5,
        "peak_mem_mb": 2048.0,
        "trainable_params": 1000,
        "total_params": 100000,
        "examples": {"train": 80, "test": 20},
        "notes": [],
        "baseline": {"test_loss": 1.8, "test_accuracy": 0.2},
        "metrics": {"train_loss_last": 0.1, "test_loss": 0.3, "test_accuracy": 0.9},
        "stopped_early": False,
    }
    return {**summary, **changes}


def _metrics() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for step in range(10, 41, 10):
        rows.append({"step": step, "loss": 2.0 / step, "lr": 1e-3 * (1 - step / 50), "tokens": 200.0 * step})
        rows[-1].update(tokens_per_s=500.0, epoch=step / 20, grad_norm=1.0)
        rows.append({"step": step, "val_loss": 2.5 / step, "val_accuracy": step / 50})
    return rows


DATA_REPORT = {
    "splits": {"train": {"file": "data/train.jsonl", "format": "labeled", "rows": 82, "bad_rows": 2}},
    "pii": {
        "train": {"policy": "mask", "hits": {"EMAIL": 3, "PHONE": 1}, "rows_with_pii": 4, "rows_dropped": 0}
    },
    "dedup": {"exact_removed": 5, "near_removed": 1, "examples": []},
    "leakage": {"policy": "drop", "overlap": {"test": {"exact": 2, "near": 1}}, "removed_from_train": 3},
    "labels": {"counts": {"greeting": 40, "refund": 40}, "imbalance_ratio": 1.0},
    "records": {"train": 80, "test": 20},
    "warnings": ["dedup removed 5 of 82 training rows"],
}

EVAL = {
    "baselines": {"zero_shot": {"test_accuracy": 0.48}, "few_shot": {"test_accuracy": 0.6}},
    "fine_tuned": {"test_accuracy": 0.9},
    "confusion_matrix": [[9, 1], [1, 9]],
    "labels": ["greeting", "refund"],
    "forgetting": {"metric": "accuracy", "before": 0.7, "after": 0.5, "change": -0.2, "tolerance": 0.05},
}
# eval.json's parts of other tasks and audits, as evaluation/ writes them (for the optional sections).
ENTITIES = {"per_type": {"PER": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
            "micro": {"precision": 1.0, "recall": 0.5, "f1": 0.667}}  # fmt: skip
CANARIES = {"by_repetitions": {"0": {"canaries": 2, "mean_exposure": 1.5, "extracted": 0}},
            "candidates": 100, "max_exposure": 6.64}  # fmt: skip
BIAS = {"data": {"subgroups": [{"subgroup": "female", "rows": 2, "gap_label": "refund", "largest_gap": 0.5}],
                 "warnings": []}}  # fmt: skip


def make_run(
    root: Path, *, summary: dict[str, Any], metrics: bool = True, data: bool = True, **evaluation: Any
) -> Path:
    """A run folder written by hand: summary.json always; the rest as asked. `evaluation` is eval.json."""
    run = root / "run"
    _write(run / "summary.json", summary)
    if metrics:
        lines = "".join(json.dumps(row) + "\n" for row in _metrics())
        (run / "metrics.jsonl").write_text(lines + '{"step": 50, "lo', encoding="utf-8")  # torn last line
    if data:
        _write(run / "data" / "report.json", DATA_REPORT)
    if evaluation:
        _write(run / "eval.json", evaluation)
    return run


def render(run: Path) -> tuple[str, Page]:
    html = write_report(run).read_text(encoding="utf-8")
    page = Page(html)
    page.text = {section: " ".join(text.split()) for section, text in page.text.items()}
    return html, page


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Page]:
    evaluation = {**EVAL, "forgetting": {**EVAL["forgetting"], "warning": True}}
    run = make_run(tmp_path_factory.mktemp("full"), summary=_summary(), **evaluation)
    return (run, *render(run))


def _shown(page: Page) -> list[str]:
    return [i for i in page.ids if i in SECTIONS]


def _linked(page: Page) -> list[str]:
    return [link.removeprefix("#") for link in page.links if link.startswith("#")]


def test_the_sections_the_run_has_are_shown_and_linked_in_order(full: tuple[Path, str, Page]) -> None:
    _, html, page = full
    expected = ["summary", "loss", "lr", "baselines", "confusion", "forgetting", "data", "cost"]
    assert _shown(page) == expected  # a classify run: no answers, entities, privacy, canaries or bias
    assert _linked(page) == expected
    assert html.index('id="summary"') < html.index('id="cost"')


def test_an_sft_run_links_no_section_it_does_not_have(tmp_path: Path) -> None:
    summary = _summary(task="sft", baseline={"val_loss": 2.0}, metrics={"val_loss": 1.2})
    summary["baselines"] = {"zero_shot": {"val_loss": 2.4}, "few_shot": {"val_loss": 2.2}}
    _, page = render(make_run(tmp_path, summary=summary))
    assert _shown(page) == _linked(page) == CORE
    for absent in ("confusion", "entities", "canaries", "bias", "privacy", "examples"):
        assert absent not in page.ids and absent not in _linked(page)
    assert "zero-shot 2.400 1.200 -1.200" in page.text["baselines"]


def test_every_optional_section_is_shown_and_linked_when_the_run_has_it(tmp_path: Path) -> None:
    privacy = {"epsilon": 3.2, "target_epsilon": 4.0, "delta": 1e-5, "accountant": "prv", "noise_multiplier": 1.1,
               "max_grad_norm": 1.0, "sample_rate": 0.05, "expected_batch": 4}  # fmt: skip
    summary = _summary(privacy=privacy)
    run = make_run(tmp_path, summary=summary, **EVAL, entities=ENTITIES, canaries=CANARIES, bias=BIAS)
    generation = {"source": "test.jsonl:1", "prompt": [{"role": "user", "content": "Hi?"}],
                  "reference": "Hello.", "zero_shot": "Hm.", "fine_tuned": "Hello."}  # fmt: skip
    (run / "generations.jsonl").write_text(json.dumps(generation) + "\n", encoding="utf-8")
    _, page = render(run)
    assert _shown(page) == _linked(page) == list(SECTIONS)
    assert MISSING not in " ".join(page.text.values())


@pytest.mark.parametrize("section", ["loss", "lr", "baselines", "confusion"])
def test_plots_are_inline_pngs(full: tuple[Path, str, Page], section: str) -> None:
    images = full[2].images[section]
    assert len(images) == 1
    assert _png(images[0]).startswith(b"\x89PNG\r\n\x1a\n")


def test_page_needs_no_network(full: tuple[Path, str, Page]) -> None:
    _, html, page = full
    assert page.links, "the nav links and images should have been found"
    assert all(link.startswith(("data:", "#")) for link in page.links)
    lowered = html.lower()
    for needle in ('src="http', 'href="http', "<script", "<link", "@import", "url(", "//fonts."):
        assert needle not in lowered


def test_baselines_from_eval_json_show_the_difference(full: tuple[Path, str, Page]) -> None:
    text = full[2].text["baselines"]
    assert "zero-shot 0.480 0.900 +0.420" in text
    assert "few-shot 0.600 0.900 +0.300" in text
    assert "before training" not in text  # eval.json takes precedence over summary.json's baseline


def test_confusion_matrix_names_the_labels(full: tuple[Path, str, Page]) -> None:
    assert 'alt="confusion matrix over greeting, refund"' in full[1]


def test_data_and_cost_sections(full: tuple[Path, str, Page]) -> None:
    data = full[2].text["data"]
    for expected in ("data/train.jsonl labeled 82 2 80 80", "EMAIL 3, PHONE 1", "exact duplicates removed 5"):
        assert expected in data
    # Two train counts, each under its own name: kept by cleaning, and examples after tokenisation.
    assert "kept after cleaning examples after tokenisation" in data
    assert "test (held out from train) — — — 20 20" in data
    assert "policy: drop; removed from train: 3" in data
    assert "test 2 1" in data  # leakage overlap: exact, near
    assert "dedup removed 5 of 82 training rows" in data
    cost = full[2].text["cost"]
    for expected in ("0m 32s", "8,000", "tokens / s (whole run) 246", "2.00 GiB", "1,000 of 100,000 (1.00%)"):
        assert expected in cost


def test_baselines_fall_back_to_summary_before_and_after(tmp_path: Path) -> None:
    _, page = render(make_run(tmp_path, summary=_summary(), metrics=False, data=False))
    text = page.text["baselines"]
    assert "test_accuracy before training 0.200 0.900 +0.700" in text
    assert "test_loss before training 1.800 0.300 -1.500" in text
    assert "train_loss_last" not in text  # no baseline for it


def test_a_bare_failed_run_renders_every_core_section(tmp_path: Path) -> None:
    summary = _summary(name="<script>alert(1)</script>", status="failed", error="CUDA out of memory <b>")
    summary.update(baseline={}, metrics={}, finished_at=None)
    html, page = render(make_run(tmp_path, summary=summary, metrics=False, data=False))
    assert _shown(page) == _linked(page) == CORE
    for section in ("loss", "lr", "baselines", "forgetting", "data"):
        assert MISSING in page.text[section], section
        assert section not in page.images
    assert "error: CUDA out of memory <b>" in page.text["summary"]
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("warning", [True, False])
def test_forgetting_warning_only_when_flagged(tmp_path: Path, warning: bool) -> None:
    forgetting = {**EVAL["forgetting"], "warning": warning}
    _, page = render(
        make_run(tmp_path, summary=_summary(baseline={}), metrics=False, data=False, forgetting=forgetting)
    )
    assert ("forgetting-warning" in page.ids) is warning
    assert ("Warning:" in page.text["forgetting"]) is warning
    assert "-0.2000" in page.text["forgetting"]
    assert "confusion" not in page.ids  # eval.json without a confusion matrix


def test_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, summary=_summary(baseline={}), metrics=False, data=False)
    path = write_report(run)
    assert path == run / "report.html"
    assert sorted(p.name for p in run.iterdir()) == ["report.html", "summary.json"]  # no temp file left

    def interrupted(src: Any, dst: Any) -> None:
        raise OSError("killed before the rename")

    previous = path.read_text(encoding="utf-8")
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError):
        write_report(run)
    assert path.read_text(encoding="utf-8") == previous  # the old page stays whole
