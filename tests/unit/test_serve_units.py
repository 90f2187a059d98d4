"""The serve pieces without a server: request → recipe, cursor pages, and the engine's per-row stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tunelab.serving.config import load_serve_config
from tunelab.serving.engine import Row, Sampling, _FanOut
from tunelab.serving.errors import APIError
from tunelab.serving.files import list_object
from tunelab.serving.jobs import JobRequest, check_request, job_recipe, resolved_hyperparameters
from tunelab.serving.store import Store, new_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "registry.sqlite")


def _config(tmp_path: Path) -> Any:
    models = {"base": {"path": "/models/base", "recipe": {"train": {"lr": 2.0e-4, "epochs": 4}}},
              "enc": {"path": "/models/enc", "kind": "embed"}}  # fmt: skip
    return load_serve_config(None, root=tmp_path, models=models, job_defaults={"train": {"batch_size": 16}})


def _file(store: Store, purpose: str = "fine-tune") -> str:
    file_id = new_id("file-")
    store.add_file({"id": file_id, "filename": "t.jsonl", "purpose": purpose, "bytes": 1, "created_at": 0,
                    "path": f"/files/{file_id}.jsonl", "status": "processed", "status_details": None})  # fmt: skip
    return file_id


def test_auto_means_the_servers_value_and_the_multiplier_scales_its_lr(tmp_path: Path, store: Store) -> None:
    config, train = _config(tmp_path), _file(store)
    auto = JobRequest(model="base", training_file=train, hyperparameters={"n_epochs": "auto"})
    recipe = job_recipe("ftjob-1", auto, config, store)
    # JOB_DEFAULTS < job_defaults < the model's recipe < the request
    assert (
        recipe["train"]["epochs"] == 4
        and recipe["train"]["batch_size"] == 16
        and recipe["train"]["lr"] == 2.0e-4
    )
    assert (
        recipe["task"] == "sft"
        and recipe["method"]["name"] == "lora"
        and recipe["model"]["name"] == "/models/base"
    )
    assert recipe["name"] == "ftjob-1" and recipe["data"]["train"] == f"/files/{train}.jsonl"
    method = {
        "type": "supervised",
        "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5, "n_epochs": 1}},
    }
    chosen = JobRequest(model="base", training_file=train, method=method, seed=9)
    recipe = job_recipe("ftjob-2", chosen, config, store)
    assert (
        recipe["train"]["lr"] == pytest.approx(1.0e-4)
        and recipe["train"]["epochs"] == 1
        and recipe["train"]["seed"] == 9
    )
    assert resolved_hyperparameters(recipe, chosen) == {
        "n_epochs": 1,
        "batch_size": 16,
        "learning_rate_multiplier": 0.5,
    }


def test_a_dpo_job_is_a_preference_run_with_its_beta(tmp_path: Path, store: Store) -> None:
    config, train = _config(tmp_path), _file(store)
    request = JobRequest(
        model="base", training_file=train, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}
    )
    check_request(request, config, store)
    recipe = job_recipe("ftjob-3", request, config, store)
    assert recipe["task"] == "preference" and recipe["preference"] == {"objective": "dpo", "beta": 0.3}
    assert resolved_hyperparameters(recipe, request)["beta"] == 0.3


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "enc"}, 400, "model"),  # an embedding model is not fine-tuned here
        ({"model": "nope"}, 400, "model"),
        ({"training_file": "file-missing"}, 404, "training_file"),
        ({"validation_file": "results"}, 400, "validation_file"),  # wrong purpose
        ({"method": {"type": "reinforcement"}}, 400, "method.type"),
        ({"hyperparameters": {"beta": 0.1}}, 400, "method.supervised.hyperparameters.beta"),
        ({"integrations": [{"type": "wandb"}]}, 400, "integrations"),
    ],
)
def test_requests_openai_refuses_at_once(
    tmp_path: Path, store: Store, body: dict, status: int, param: str
) -> None:
    fields = {"model": "base", "training_file": _file(store), **body}
    if fields.get("validation_file") == "results":
        fields["validation_file"] = _file(store, purpose="fine-tune-results")
    with pytest.raises(APIError) as caught:
        check_request(JobRequest(**fields), _config(tmp_path), store)
    assert caught.value.status == status and caught.value.param == param


def test_cursor_pages_honour_after_and_say_when_there_is_more(store: Store) -> None:
    ids = [_file(store) for _ in range(5)]
    page = list_object(store.list_files(purpose=None, after=None, limit=2, order="desc"), 2, lambda r: r)
    assert [r["id"] for r in page["data"]] == ids[:-3:-1] and page["has_more"] and page["last_id"] == ids[3]
    rest = store.list_files(purpose=None, after=page["last_id"], limit=10, order="desc")
    assert [r["id"] for r in rest] == ids[2::-1]
    assert [r["id"] for r in store.list_files(purpose=None, after=ids[1], limit=10, order="asc")] == ids[2:]
    last = list_object(store.list_files(purpose=None, after=ids[1], limit=1, order="desc"), 1, lambda r: r)
    assert last["has_more"] is False and last["first_id"] == ids[0]
    assert store.list_files(purpose=None, after="file-unknown", limit=10, order="desc") == []  # never loops


class _Letters:
    """A tokenizer whose token i decodes to chr(i): enough to follow a row's text."""

    def decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(t) for t in tokens)


def _run(tokens: list[int], sampling: Sampling, stops: set[int] = frozenset({0})) -> list[tuple]:  # type: ignore[assignment]
    async def go() -> list[tuple]:
        row = Row(
            served=None,
            prompt=[1],
            sampling=sampling,
            loop=asyncio.get_running_loop(),
            events=asyncio.Queue(),
        )  # type: ignore[arg-type]
        streamer = _FanOut([row], _Letters(), set(stops))
        streamer.put(None)  # type: ignore[arg-type]  # the prompt
        import torch

        for token in tokens:
            if not row.done:
                streamer.put(torch.tensor([token]))
        if not row.done:
            streamer.finish(row, "length")
        await asyncio.sleep(0)
        return [row.events.get_nowait() for _ in range(row.events.qsize())]

    return asyncio.run(go())


def test_a_stop_string_is_never_streamed_and_cuts_the_answer() -> None:
    events = _run([ord(c) for c in "ab END more"], Sampling(max_tokens=50, stop=("END",)))
    assert "".join(e[1] for e in events if e[0] == "text") == "ab "
    assert events[-1] == ("end", "stop", 6)  # the six tokens generated, up to the one completing "END"


def test_a_row_ends_at_its_stop_token_or_its_own_max_tokens() -> None:
    stopped = _run([ord("h"), ord("i"), 0, ord("x")], Sampling(max_tokens=50))
    assert "".join(e[1] for e in stopped if e[0] == "text") == "hi" and stopped[-1] == ("end", "stop", 3)
    cut = _run([ord(c) for c in "abcdef"], Sampling(max_tokens=4))
    assert "".join(e[1] for e in cut if e[0] == "text") == "abcd" and cut[-1] == ("end", "length", 4)
