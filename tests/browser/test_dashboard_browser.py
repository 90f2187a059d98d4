"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright): log in, the
runs list, a run's report with its plots, compare, a job started from the Jobs page until it
succeeds, five pairs rated with the keyboard, and the export holding those five ratings.

Each page is also photographed at 1280 px wide; with TUNELAB_SCREENSHOTS=<folder> (`make
screenshots`, for docs/serving.md) the pictures are kept there. One server, one browser, one story: the steps build
on each other in file order, as a user's session would.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import make_recipe
from tests.dashboard import ANSWERS, seed_pairs, train_runs
from tests.serving import counting_chats, live_server, serve_config

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("TUNELAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it where it can)",
                allow_module_level=True)  # fmt: skip
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
WIDTH = 1280


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("browser")
    runs = train_runs(root, tiny_llama)
    _tune(root, tiny_llama)
    config = serve_config(root, tiny_llama)
    seed_pairs(config)
    with live_server(config) as (url, key):
        yield {"base": url.removesuffix("/v1"), "key": key, "runs": [r.name for r in runs], "root": root}


def _tune(root: Path, model: Path) -> None:
    """A real `tunelab tune` study of three trials into the server's runs folder (the Studies page)."""
    folder = root / "study"
    folder.mkdir()
    path = make_recipe(folder, model, "sft", train={"max_steps": 2, "eval_every": 2, "save_every": 100},
                       output={"dir": str(root / "runs")})  # fmt: skip
    raw = yaml.safe_load(path.read_text())
    raw["search"] = {"metric": "val_loss", "sampler": "grid", "trials": 3, "pruner": "none",
                     "space": {"train.lr": [1.0e-3, 3.0e-3, 1.0e-2]}}  # fmt: skip
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    from tunelab.cli import app

    result = CliRunner().invoke(app, ["tune", str(path)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def browser_page(served: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and this machine run as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": WIDTH, "height": 900}, accept_downloads=True)
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.shots = Path(os.environ.get("TUNELAB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
        yield page
        context.close()
        browser.close()


def _shot(page: Any, name: str) -> None:
    page.shots.mkdir(parents=True, exist_ok=True)
    path = page.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[16:20] == WIDTH.to_bytes(4, "big")  # the PNG header's width


def test_log_in_and_see_the_runs(browser_page: Any, served: dict[str, Any]) -> None:
    page = browser_page
    page.goto(served["base"] + "/runs")
    assert "/login" in page.url  # no session yet
    _shot(page, "login")
    page.fill("input[name=key]", served["key"])
    page.fill("input[name=rater]", "alice")
    page.click("button:has-text('Log in')")
    page.wait_for_url("**/runs")
    for run in served["runs"]:
        sync_api.expect(page.locator("table.runs")).to_contain_text(run)
    assert page.locator("header .who").inner_text() == "alice"
    _shot(page, "runs")


def test_open_a_run_with_its_report_and_plots(browser_page: Any, served: dict[str, Any]) -> None:
    page = browser_page
    page.click(f"table.runs a[href='/runs/{served['runs'][0]}']")
    page.wait_for_url(f"**/runs/{served['runs'][0]}")
    chart = page.locator("#loss-chart")
    sync_api.expect(chart).to_have_attribute("data-ended", "true")  # the stream sent every line, then ended
    assert int(chart.get_attribute("data-points") or 0) >= 1
    assert page.locator("#loss-chart polyline.train").count() == 1
    report = page.frame_locator("iframe.report")
    sync_api.expect(report.locator("h1")).to_be_visible()
    images = report.locator("img[src^='data:image/png']")
    assert images.count() >= 1  # the report's plots (loss curve, learning rate)
    assert images.first.evaluate("img => img.naturalWidth") > 100  # decoded, not a broken image
    _shot(page, "run")


def test_a_run_shorter_than_its_log_interval_shows_its_one_point(
    browser_page: Any, served: dict[str, Any]
) -> None:
    # The second run logs every 10 steps and validates every 100 (the defaults) but trains 4: its one
    # train loss and one validation loss are both at step 4. A one-point line has no length, so each
    # point must be a dot, on an axis that ends at the step it was logged at.
    page = browser_page
    page.goto(served["base"] + f"/runs/{served['runs'][1]}")
    chart = page.locator("#loss-chart")
    sync_api.expect(chart).to_have_attribute("data-ended", "true")
    assert chart.get_attribute("data-points") == "1"
    labels = chart.locator("svg text").all_text_contents()
    assert "step 4" in labels and "step 5" not in labels
    for name in ("train", "val"):
        dot = chart.locator(f"circle.{name}")
        assert dot.count() == 1, name
        sync_api.expect(dot).to_be_visible()
        assert dot.get_attribute("cx") == "1190"  # the axis' right end: step 4 of 0..4
        assert dot.evaluate("c => getComputedStyle(c).fill") not in ("none", "")
    _shot(page, "run-short")


def test_compare_two_runs_highlights_the_field_that_differs(
    browser_page: Any, served: dict[str, Any]
) -> None:
    page = browser_page
    page.goto(served["base"] + "/runs")
    for run in served["runs"]:
        page.check(f"input[type=checkbox][value='{run}']")
    page.click("button:has-text('Compare ticked runs')")
    page.wait_for_url("**/compare?**")
    lr = page.locator("tr[data-field='train.lr']")
    seed = page.locator("tr[data-field='train.seed']")
    sync_api.expect(lr).to_have_class("differs")
    highlighted = lr.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
    plain = seed.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
    assert highlighted != plain, (highlighted, plain)  # seen, not only marked up
    _shot(page, "compare")


def test_start_a_job_from_the_jobs_page_until_it_succeeds(
    browser_page: Any, served: dict[str, Any], tmp_path: Path
) -> None:
    page = browser_page
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in counting_chats(12)), encoding="utf-8")
    page.goto(served["base"] + "/jobs")
    page.set_input_files("input[name=file]", str(data))
    page.select_option("select[name=model]", "tiny")
    page.fill("input[name=n_epochs]", "1")
    page.click("button:has-text('Start job')")
    page.wait_for_url("**/jobs/ftjob-*")
    # The job page reloads itself every 2 s while the job is active.
    sync_api.expect(page.locator("#job-status")).to_have_text("succeeded", timeout=240_000)
    assert page.locator("table.events").inner_text().count("\n") >= 2
    _shot(page, "job")
    page.goto(served["base"] + "/jobs")
    sync_api.expect(page.locator("table.jobs")).to_contain_text("succeeded")
    _shot(page, "jobs")


def test_studies_show_their_trials(browser_page: Any, served: dict[str, Any]) -> None:
    page = browser_page
    page.goto(served["base"] + "/studies")
    page.click("a[href^='/studies/']")
    sync_api.expect(page.locator("table.trials tbody tr")).to_have_count(3)
    _shot(page, "study")
    page.click("table.trials a[href^='/runs/']")  # a trial is an ordinary run, with its own page
    sync_api.expect(page.locator("#run-status")).to_have_text("completed")
    page.goto(served["base"] + "/studies")
    _shot(page, "studies")


def test_the_playground_answers_from_a_served_model(browser_page: Any, served: dict[str, Any]) -> None:
    page = browser_page
    page.goto(served["base"] + "/playground")
    page.select_option("select[name=model]", index=1)  # the model the job above fine-tuned
    page.select_option("select[name=other]", "tiny")  # its base, which has no chat template
    page.fill("textarea[name=message]", "Count on from 3")
    page.fill("input[name=max_tokens]", "8")
    page.click("button:has-text('Send')")
    sync_api.expect(page.locator("#answer-a")).to_contain_text("ft:tiny")
    sync_api.expect(page.locator("#answer-b")).to_contain_text("has no chat template")
    assert "error" not in page.locator("#answer-a").inner_text()
    _shot(page, "playground")


def test_rate_five_pairs_with_the_keyboard_then_export_them(
    browser_page: Any, served: dict[str, Any]
) -> None:
    page = browser_page
    page.goto(served["base"] + "/review")
    _shot(page, "review")
    wanted = []  # the text the rater preferred, pair by pair
    for i in range(5):
        pair = page.locator("input[name=pair_id]").get_attribute("value")
        left, right = (
            page.locator("#candidate-a .text").inner_text(),
            page.locator("#candidate-b .text").inner_text(),
        )
        key = "a" if i % 2 == 0 else "b"
        wanted.append(left if key == "a" else right)
        page.keyboard.press(str(i % 5 + 1))  # a score, by key too
        page.keyboard.press(key)
        page.wait_for_function(f"() => document.querySelector('input[name=pair_id]')?.value !== '{pair}'")
    sync_api.expect(page.locator("p.done")).to_be_visible()  # every pair rated by this rater
    sync_api.expect(page.locator("p.meta")).to_contain_text("5 of 5 pairs rated")
    page.select_option("select[name=format]", "trl")
    with page.expect_download() as download:
        page.click("button:has-text('Export ratings')")
    rows = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert len(rows) == 5
    chosen = {row["chosen"][-1]["content"] for row in rows}
    assert chosen == set(wanted)
    assert {row["rejected"][-1]["content"] for row in rows} == {
        t for ts in ANSWERS.values() for t in ts
    } - chosen
