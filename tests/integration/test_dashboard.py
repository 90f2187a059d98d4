"""The dashboard over HTTP, on a live server: every page needs a session, every POST a CSRF token, and
each page shows what the library holds. (The browser tests, tests/browser/, click through it.)"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from markupsafe import escape

from tests.dashboard import PROMPTS, csrf_of, forms, login, seed_pairs, train_runs
from tests.serving import JOB_DEFAULTS, counting_chats, live_server, serve_config
from tunelab.feedback.store import FeedbackStore
from tunelab.runs.registry import connect
from tunelab.serving.app import create_app
from tunelab.serving.auth import create_key
from tunelab.serving.store import Store

pytestmark = pytest.mark.slow
OPEN = ("/login", "/health", "/metrics", "/static")  # the only paths served without a session


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("dash")
    runs = train_runs(root, tiny_llama)
    config = serve_config(root, tiny_llama)
    seed_pairs(config)
    with live_server(config) as (url, key):
        yield config, url.removesuffix("/v1"), key, [r.name for r in runs]


def _dashboard_routes(config: Any) -> list[tuple[str, str]]:
    """(method, path) of every dashboard route, from the app's own route table."""
    app = create_app(config)
    return [(method, route.path) for route in app.state.dashboard_routes
            if hasattr(route, "methods") and not route.path.startswith(("/v1/", *OPEN))
            for method in sorted(route.methods - {"HEAD"})]  # fmt: skip


def _concrete(path: str, runs: list[str]) -> str:
    return path.replace("{run_id}", runs[0]).replace("{name}", "none").replace("{job_id}", "ftjob-none")


def test_without_a_session_every_page_redirects_to_login(served: Any) -> None:
    config, base, _, runs = served
    routes = _dashboard_routes(config)
    gets = [path for method, path in routes if method == "GET"]
    assert {"/runs", "/runs/{run_id}", "/compare", "/jobs", "/studies", "/playground", "/review"} <= set(gets)
    for path in gets:
        for cookies in ({}, {"tl_session": "forged"}):
            answer = httpx.get(base + _concrete(path, runs), cookies=cookies)
            assert answer.status_code == 303, (path, answer.status_code)
            assert answer.headers["location"].startswith("/login?next=/"), path
    # A bearer key is not a session either: the pages are for browsers (the API is /v1).
    assert httpx.get(base + "/runs", headers={"Authorization": f"Bearer {served[2]}"}).status_code == 303


def test_every_post_needs_the_sessions_csrf_token(served: Any) -> None:
    config, base, key, runs = served
    http = login(base, key, "rater-csrf")
    posts = [path for method, path in _dashboard_routes(config) if method == "POST"]
    assert {"/logout", "/jobs/new", "/review", "/review/export", "/playground/chat"} <= set(posts)
    for path in posts:
        for token in ({}, {"csrf": "wrong"}):
            answer = http.post(_concrete(path, runs), data=token)
            assert answer.status_code == 403, (path, answer.status_code, answer.text[:200])
    # And nothing happened: the session still works, no rating was stored, no job started.
    assert http.get("/runs").status_code == 200
    assert FeedbackStore(config.database).progress()["ratings"] == 0
    assert Store(config.database).list_jobs(after=None, limit=5, metadata={}) == []
    # Without any session, a POST goes to login too.
    assert httpx.post(base + "/review", data={"csrf": "x"}).status_code == 303


def test_every_form_on_every_page_carries_the_token(served: Any) -> None:
    _, base, key, runs = served
    http = login(base, key, "rater-forms")
    token = csrf_of(http.get("/runs").text)
    # The POST forms of each page: logout on every one, the job form, rating (a pair is waiting), export.
    posts = {"/runs": ["/logout"], f"/runs/{runs[0]}": ["/logout"],
             f"/compare?run={runs[0]}&run={runs[1]}": ["/logout"], "/jobs": ["/logout", "/jobs/new"],
             "/studies": ["/logout"], "/playground": ["/logout"],
             "/review": ["/logout", "/review", "/review/export"]}  # fmt: skip
    for path, actions in posts.items():
        answer = http.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        posted = [form for form in forms(answer.text) if form["method"] == "post"]
        assert [form["action"] for form in posted] == actions, path
        assert all("csrf" in form["hidden"] for form in posted), path
        # Every token field holds this session's token, one per POST form; the page's script (the
        # playground's chat) reads the same token from <main>.
        assert re.findall(r'name="csrf" value="([^"]*)"', answer.text) == [token] * len(actions), path
        assert f'<main data-csrf="{token}">' in answer.text, path


def test_login_refuses_bad_keys_and_a_revoked_key_ends_the_session(served: Any) -> None:
    config, base, _, _ = served
    http = httpx.Client(base_url=base)
    token = csrf_of(http.get("/login").text)
    wrong = http.post("/login", data={"key": "tl-wrong", "csrf": token, "next": "/runs"})
    assert wrong.status_code == 200 and "not a live key" in wrong.text
    forged = httpx.post(base + "/login", data={"key": "tl-wrong", "csrf": "guess", "next": "/"})
    assert forged.status_code == 403  # no login-CSRF cookie: a cross-site login attempt
    key, row = create_key(Store(config.database), "short-lived")
    session = login(base, key)
    assert session.get("/runs").status_code == 200
    Store(config.database).revoke_key(row["id"])
    assert session.get("/runs").status_code == 303


def test_login_goes_back_to_the_page_asked_for_but_never_off_site(served: Any) -> None:
    _, base, key, _ = served
    first = httpx.get(base + "/jobs")
    assert first.headers["location"] == "/login?next=/jobs"
    http = httpx.Client(base_url=base)
    for asked, landed in (("/jobs", "/jobs"), ("//evil.example/x", "/"), ("https://evil.example", "/")):
        token = csrf_of(http.get("/login").text)
        answer = http.post("/login", data={"key": key, "csrf": token, "next": asked})
        assert answer.headers["location"] == landed


def test_pages_show_the_registry_the_diff_and_the_pairs(served: Any) -> None:
    _, base, key, runs = served
    http = login(base, key, "rater-pages")

    def linked(html: str) -> set[str]:
        return set(re.findall(r'<a href="/runs/([^"/]+)">', html))

    assert linked(http.get("/runs").text) == set(runs)
    # Two runs started in the same second are x and x-2: filter by the longer id, which only one has.
    longer = max(runs, key=len)
    assert linked(http.get("/runs", params={"q": longer}).text) == {longer}
    assert linked(http.get("/runs", params={"task": "classify"}).text) == set()
    by_name = http.get("/runs", params={"sort": "steps", "order": "asc"})
    assert by_name.status_code == 200 and linked(by_name.text) == set(runs)
    compare = http.get("/compare", params=[("run", runs[0]), ("run", runs[1])]).text
    differing = re.findall(r'<tr class="differs" data-field="([^"]+)"', compare)
    assert "train.lr" in differing and "train.seed" not in differing
    run_page = http.get(f"/runs/{runs[0]}").text
    assert "report.html" in run_page and "loss-chart" in run_page
    report = http.get(f"/runs/{runs[0]}/report.html")
    assert report.status_code == 200 and "data:image/png;base64" in report.text
    review = http.get("/review").text
    assert any(prompt in review for prompt in PROMPTS) and "A is better" in review


def _shown(value: float) -> str:
    return f"{value:.4g}"  # the pages' `number` filter, for a float


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def _score_table(html: str) -> tuple[list[str], dict[str, list[str]]]:
    """The run page's metrics table: its column heads, and each metric's cells after the name."""
    table = re.search(r'<table class="scores">(.*?)</table>', html, flags=re.S)
    assert table, "no metrics table on the run page"
    heads = re.findall(r"<th>(.*?)</th>", table.group(1))
    rows = re.findall(r'<tr data-metric="([^"]+)"><td>[^<]*</td>(.*?)</tr>', table.group(1))
    return heads, {metric: re.findall(r"<td[^>]*>(.*?)</td>", cells) for metric, cells in rows}


def test_the_run_page_shows_the_baselines_beside_the_fine_tuned_scores(served: Any) -> None:
    config, base, key, runs = served
    http = login(base, key, "rater-scores")
    for run_id in runs:
        summary = json.loads((config.runs_dir / run_id / "summary.json").read_text())
        html = http.get(f"/runs/{run_id}").text
        heads, rows = _score_table(html)
        assert heads == ["metric", "before training", "zero-shot", "few-shot", "fine-tuned"]
        zero, few = summary["baselines"]["zero_shot"], summary["baselines"]["few_shot"]
        columns = [summary["before_training"], zero, few, summary["metrics"]]
        for metric, cells in rows.items():
            expected = [_shown(c[metric]) if isinstance(c.get(metric), float) else "" for c in columns]
            assert cells == expected, (run_id, metric)
        # Every score is a row; a baseline's bookkeeping (rows scored, shots drawn) is not a score.
        scored = [m for m in zero | few if m.startswith("val_")]
        scores = {*summary["metrics"], *summary["before_training"], *scored}
        assert set(rows) == scores and {"scored", "k", "shots_mean"}.isdisjoint(rows)
        assert all(rows["val_loss"]) and all(rows["val_perplexity"])  # before, zero-shot, few-shot, tuned
        assert f'<p class="meta note">few-shot: {escape(few["note"])}</p>' in html
    # eval.metrics: the generated answers' scores, for the base model zero- and few-shot too.
    zero, few = (json.loads((config.runs_dir / runs[0] / "summary.json").read_text())["baselines"][name]
                 for name in ("zero_shot", "few_shot"))  # fmt: skip
    _, rows = _score_table(http.get(f"/runs/{runs[0]}").text)
    assert rows["val_exact_match"][1:3] == [_shown(zero["val_exact_match"]), _shown(few["val_exact_match"])]


def test_the_runs_list_shows_each_runs_main_metric(served: Any) -> None:
    config, base, key, runs = served
    http = login(base, key, "rater-main")
    html = http.get("/runs").text
    assert "<th>main metric</th>" in html
    row = r'<tr data-run="([^"]+)">.*?<td class="main-metric">(.*?)</td>'
    cells = dict(re.findall(row, html, flags=re.S))
    metrics = [json.loads((config.runs_dir / run / "summary.json").read_text())["metrics"] for run in runs]
    # The first run scored generated answers (eval.metrics): exact match leads; the second only has losses.
    assert _text(cells[runs[0]]) == f"val_exact_match {_shown(metrics[0]['val_exact_match'])}"
    assert _text(cells[runs[1]]) == f"val_loss {_shown(metrics[1]['val_loss'])}"


def test_the_live_metrics_stream_sends_every_line_then_ends(served: Any) -> None:
    config, base, key, runs = served
    http = login(base, key, "rater-stream")
    lines = (config.runs_dir / runs[0] / "metrics.jsonl").read_text().splitlines()
    stream = http.get(f"/runs/{runs[0]}/metrics").text
    assert stream.count('data: {"') == len(lines) and stream.rstrip().endswith("event: end\ndata: {}")


def test_the_stream_follows_a_running_run_line_by_line_until_it_ends(served: Any) -> None:
    config, base, key, runs = served
    run_id, metrics = runs[1], config.runs_dir / runs[1] / "metrics.jsonl"
    before = metrics.read_text()
    # The run is trained in this process, so its recorded pid is alive: "running" stays running.
    _set_status(config.database, run_id, "running")

    def write_as_a_run_does() -> None:
        time.sleep(1.0)
        with metrics.open("a") as out:
            out.write('{"step": 100, "loss": 1.5}\n{"step": 101, "lo')  # a line half written...
            out.flush()
            time.sleep(1.2)
            out.write('ss": 1.25}\n')  # ...is sent only once it is whole
        time.sleep(1.0)
        _set_status(config.database, run_id, "completed")

    writer = threading.Thread(target=write_as_a_run_does)
    try:
        http = login(base, key, "rater-live")
        writer.start()
        started = time.monotonic()
        with http.stream("GET", f"/runs/{run_id}/metrics") as answer:
            lines = [line for line in answer.iter_lines() if line]
        took = time.monotonic() - started
    finally:
        writer.join()
        metrics.write_text(before)
        _set_status(config.database, run_id, "completed")
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[: len(before.splitlines())] == before.splitlines()
    assert data[-3:] == ['{"step": 100, "loss": 1.5}', '{"step": 101, "loss": 1.25}', "{}"]
    assert lines[-2] == "event: end" and took >= 3  # it waited for the run, then ended


def _set_status(database: Path, run_id: str, status: str) -> None:
    with connect(database) as conn:
        conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))


def test_a_job_started_paused_resumed_and_cancelled_from_its_pages(tiny_llama: Path, tmp_path: Path) -> None:
    # Long enough to be caught running: 40 rows, batch 1, 5 epochs (the recovery tests' job).
    slow = {**JOB_DEFAULTS, "train": {**JOB_DEFAULTS["train"], "batch_size": 1, "epochs": 5, "save_every": 5}}
    config = serve_config(tmp_path / "serve", tiny_llama, job_defaults=slow)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in counting_chats(40)), encoding="utf-8")
    with live_server(config) as (url, key):
        http = login(url.removesuffix("/v1"), key, "rater-jobs")
        token = csrf_of(http.get("/jobs").text)
        with data.open("rb") as handle:
            started = http.post("/jobs/new", data={"csrf": token, "model": "tiny", "method": "supervised"},
                                files={"file": ("chats.jsonl", handle, "application/jsonl")})  # fmt: skip
        assert started.status_code == 303, started.text[:300]
        job_id = started.headers["location"].removeprefix("/jobs/")
        store = Store(config.database)
        _wait(
            lambda: (
                store.get_job(job_id)["status"] == "running"
                and store.list_checkpoints(job_id, after=None, limit=1)
            )
        )
        for verb, expected in (
            ("pause", {"paused"}),
            ("resume", {"queued", "running"}),
            ("cancel", {"cancelled"}),
        ):
            if verb == "cancel":
                _wait(lambda: store.get_job(job_id)["status"] == "running")
            answer = http.post(f"/jobs/{job_id}/{verb}", data={"csrf": token})
            assert answer.status_code == 303, (verb, answer.text[:300])
            assert store.get_job(job_id)["status"] in expected, verb  # resumed: the supervisor may start it
        page = http.get(f"/jobs/{job_id}").text
        assert 'id="job-status">cancelled<' in page and "/cancel" not in page  # no verbs left to offer
        again = http.post(f"/jobs/{job_id}/resume", data={"csrf": token})
        assert again.status_code == 409 and "already cancelled" in again.text


def _wait(condition: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_failed_jobs_error_keeps_its_lines_on_its_page(tiny_llama: Path, tmp_path: Path) -> None:
    config = serve_config(tmp_path / "serve", tiny_llama)
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data.write_text(f'{json.dumps(good)}\n{{not json\n{{"text": 1}}\n', encoding="utf-8")
    with live_server(config) as (url, key):
        http = login(url.removesuffix("/v1"), key, "rater-failed")
        token = csrf_of(http.get("/jobs").text)
        with data.open("rb") as handle:
            started = http.post("/jobs/new", data={"csrf": token, "model": "tiny", "method": "supervised"},
                                files={"file": ("bad.jsonl", handle, "application/jsonl")})  # fmt: skip
        assert started.status_code == 303, started.text[:300]
        job_id = started.headers["location"].removeprefix("/jobs/")
        store = Store(config.database)
        _wait(lambda: store.get_job(job_id)["status"] == "failed")
        message = store.get_job(job_id)["state"]["error"]["message"]
        page = http.get(f"/jobs/{job_id}").text
        style = http.get("/static/style.css").text
    assert message.count("\n") == 3  # the count, one line per bad row, then the fix
    # Preformatted, so its lines stay lines; the stylesheet wraps it rather than widen the page.
    assert f'<pre class="error" id="job-error">{escape(message)}</pre>' in page
    rule = re.search(r"^\.error \{([^}]*)\}", style, flags=re.M)
    assert rule and "white-space: pre-wrap" in rule.group(1) and "overflow-wrap: anywhere" in rule.group(1)
