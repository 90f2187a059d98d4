"""`tunelab serve` refuses what it must: no key, a wrong or revoked key, an oversized upload, a path in a
filename, a malformed file, an unknown model or file; every error in OpenAI's shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the openai client's own HTTP library, for what the client cannot send
import openai
import pytest

from tests.serving import client, live_server, serve_config, upload, wait_for
from tunelab.serving.app import create_app
from tunelab.serving.auth import create_key
from tunelab.serving.store import Store

pytestmark = pytest.mark.slow
LIMIT_MB = 0.05  # 52,428 bytes


@pytest.fixture(scope="module")
def served(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = serve_config(tmp_path_factory.mktemp("serve"), tiny_llama, max_upload_mb=LIMIT_MB, max_pending=1)
    with live_server(config) as (url, key):
        yield config, url, key


def _error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_every_v1_route_needs_a_key(served: Any, tiny_llama: Path, tmp_path: Path) -> None:
    _, url, _ = served
    # The app's own route table (its OpenAPI description), not a list kept by hand.
    paths = create_app(serve_config(tmp_path, tiny_llama)).openapi()["paths"]
    v1 = [(method.upper(), path) for path, ops in paths.items() if path.startswith("/v1/") for method in ops]
    assert len(v1) >= 17
    base = url.removesuffix("/v1")
    for method, path in v1:
        concrete = re.sub(r"\{[^}]+\}", "some-id", path)
        for headers in ({}, {"Authorization": "Bearer tl-wrong"}, {"Authorization": "Basic abc"}):
            response = httpx.request(method, base + concrete, headers=headers)
            _error_shape(response, 401)
    assert httpx.get(base + "/health").status_code == 200
    metrics = httpx.get(base + "/metrics")
    assert metrics.status_code == 200 and 'tunelab_jobs{status="running"}' in metrics.text


def test_a_wrong_or_revoked_key_is_refused_by_the_client(served: Any) -> None:
    config, url, key = served
    with pytest.raises(openai.AuthenticationError):
        client(url, key + "x").models.list()
    store = Store(config.database)
    other, row = create_key(store, "short-lived")
    assert client(url, other).models.list().data
    assert store.revoke_key(row["id"])
    with pytest.raises(openai.AuthenticationError):
        client(url, other).models.list()
    assert all(k["sha256"] != other and other not in str(k) for k in store.all_keys())  # only the digest


def _stored(config: Any) -> list[Path]:
    folder = config.root / "files"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(served: Any, tmp_path: Path) -> None:
    config, url, key = served
    before = _stored(config)
    big = tmp_path / "big.jsonl"
    big.write_text('{"messages": []}\n' * 4000)  # 68 kB
    with pytest.raises(openai.APIStatusError) as caught, big.open("rb") as handle:
        client(url, key).files.create(file=handle, purpose="fine-tune")
    assert caught.value.status_code == 413 and caught.value.code == "file_too_large"

    # Without a Content-Length the body is cut off while it streams in.
    def chunks() -> Any:
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 4096
        yield b"\r\n--b--\r\n"

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"}
    _error_shape(httpx.post(f"{url}/files", content=chunks(), headers=headers), 413)
    assert _stored(config) == before
    assert "big.jsonl" not in [f.filename for f in client(url, key).files.list()]


def test_a_filename_is_a_label_never_a_path(served: Any, tmp_path: Path) -> None:
    config, url, key = served
    body = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    files = {"file": ("../../escaped.jsonl", body)}
    response = httpx.post(f"{url}/files", files=files, data={"purpose": "fine-tune"},
                          headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["filename"] == "../../escaped.jsonl" and stored["status"] == "processed"
    assert (config.root / "files" / f"{stored['id']}.jsonl").read_bytes() == body
    assert not list(config.root.parent.rglob("escaped*"))
    assert client(url, key).files.content(stored["id"]).content == body
    deleted = client(url, key).files.delete(stored["id"])
    assert deleted.deleted and not (config.root / "files" / f"{stored['id']}.jsonl").exists()


def test_a_malformed_file_fails_its_job_in_validating_files_with_file_and_line(
    served: Any, tmp_path: Path
) -> None:
    _, url, key = served
    api = client(url, key)
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{__import__('json').dumps(good)}\n{{not json\n")
    with path.open("rb") as handle:
        uploaded = api.files.create(file=handle, purpose="fine-tune")
    assert uploaded.status == "error" and f"{uploaded.id} (bad.jsonl):2:" in uploaded.status_details
    job = api.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    failed = wait_for(api, job.id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file" and f"{uploaded.id} (bad.jsonl):2:" in failed.error.message
    assert failed.tunelab["run_dir"] is None  # it never trained
    events = [e.message for e in api.fine_tuning.jobs.list_events(job.id)]
    assert any(":2:" in m for m in events)
    # The fix is one an API user can carry out: a request cannot set the recipe's data.on_error.
    for told in (uploaded.status_details, failed.error.message):
        assert "data.on_error" not in told
        assert "fix: correct the rows named above in your file, upload it again (files.create)" in told


def test_unknown_models_files_and_jobs_in_openai_errors(served: Any, tmp_path: Path) -> None:
    _, url, key = served
    api = client(url, key)
    training = upload(api, tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                                {"role": "assistant", "content": "b"}]}])  # fmt: skip
    with pytest.raises(openai.BadRequestError) as caught:
        api.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training.id)
    assert caught.value.code == "model_not_available" and "tiny" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        api.fine_tuning.jobs.create(model="tiny", training_file="file-nope")
    assert missing.value.body["param"] == "training_file"
    with pytest.raises(openai.NotFoundError):
        api.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.BadRequestError):  # a value the recipe refuses
        api.fine_tuning.jobs.create(model="tiny", training_file=training.id,
                                    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}})  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        api.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={"type": "reinforcement"})
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="ft:unknown", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):  # malformed body: 400 (not FastAPI's 422), OpenAI's shape
        api.chat.completions.create(model="tiny", messages=[])


def test_a_full_queue_answers_429_which_the_client_maps(served: Any) -> None:
    _, url, key = served
    with pytest.raises(openai.RateLimitError) as caught:  # two answers asked, one may wait
        client(url, key).completions.create(model="tiny", prompt="hi", n=2, max_tokens=2)
    assert caught.value.code == "rate_limit_exceeded"
