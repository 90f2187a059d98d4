"""`tunelab serve` driven by the official openai client, unchanged, on 127.0.0.1: upload, fine-tune,
follow the job, then chat with the fine-tuned model, streaming and not."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import CHATS
from tests.serving import FINISHED, client, counting_chats, live_server, serve_config, upload, wait_for
from tunelab.generation import encode_chat, generate_batch
from tunelab.models.restore import load_trained
from tunelab.runs.registry import list_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with live_server(serve_config(tmp_path_factory.mktemp("serve"), tiny_llama)) as (url, key):
        yield client(url, key)


@pytest.fixture(scope="module")
def finished_job(server: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("data")
    training = upload(server, folder / "train.jsonl", counting_chats(24))
    validation = upload(server, folder / "val.jsonl", CHATS[:4])
    job = server.fine_tuning.jobs.create(
        model="tiny", training_file=training.id, validation_file=validation.id, suffix="counting", seed=3,
        metadata={"team": "tests"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}},
    )  # fmt: skip
    assert job.status == "validating_files" and job.id.startswith("ftjob-")
    return wait_for(server, job.id)


def test_a_job_trains_and_reports_as_openai_does(server: openai.OpenAI, finished_job: Any) -> None:
    job = finished_job
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:tunelab:counting:{job.id.removeprefix('ftjob-')}"
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4  # auto: the server's
    assert job.seed == 3 and job.metadata == {"team": "tests"} and job.finished_at >= job.created_at
    summary = json.loads((Path(job.tunelab["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "completed" and job.trained_tokens == summary["tokens"] > 0
    assert summary["steps"] == 12  # 24 rows, batch 4, 2 epochs: an ordinary run of the job's recipe
    runs = list_runs(Path(job.tunelab["run_dir"]).parent)  # and it is in the run registry
    assert [r["run_id"] for r in runs if r["run_id"] == Path(job.tunelab["run_dir"]).name]
    assert Path(job.tunelab["report"]).is_file()


def test_one_job_trains_at_a_time_and_the_rest_queue(server: openai.OpenAI, tmp_path: Path) -> None:
    training = upload(server, tmp_path / "small.jsonl", counting_chats(8))
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}
    jobs = [
        server.fine_tuning.jobs.create(model="tiny", training_file=training.id, method=method)
        for _ in range(2)
    ]
    seen: set[tuple[str, str]] = set()
    while True:
        statuses = tuple(server.fine_tuning.jobs.retrieve(j.id).status for j in jobs)
        assert statuses.count("running") <= 1, statuses
        seen.add(statuses)
        if all(s in FINISHED for s in statuses):
            break
        time.sleep(0.02)
    assert ("running", "queued") in seen and statuses == ("succeeded", "succeeded")


def test_events_stream_the_loop_and_checkpoints_carry_metrics(
    server: openai.OpenAI, finished_job: Any
) -> None:
    events = list(server.fine_tuning.jobs.list_events(finished_job.id, limit=7))  # auto-paginates
    assert all(e.id.startswith("ft-event-") for e in events)
    assert len({e.id for e in events}) == len(events)  # pages neither repeat nor skip
    messages = [e.message for e in reversed(events)]  # the API lists newest first
    assert (
        messages[0].startswith("Created fine-tuning job")
        and messages[-1] == "The job has successfully completed"
    )
    steps = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert sorted(d["step"] for d in steps) == list(range(1, 13))
    checkpoints = list(server.fine_tuning.jobs.checkpoints.list(finished_job.id))
    assert [c.step_number for c in checkpoints] == [12, 10, 8, 6, 4, 2]
    last = checkpoints[0]
    assert last.id.startswith("ftckpt_") and last.fine_tuned_model_checkpoint.endswith(":ckpt-step-12")
    by_step = {d["step"]: d["train_loss"] for d in steps}
    assert last.metrics.train_loss == pytest.approx(by_step[12]) and last.metrics.valid_loss is not None
    assert (
        last.metrics.full_valid_loss == last.metrics.valid_loss
    )  # the last step evaluates, on the whole split


def test_the_result_file_is_the_step_metrics_csv(server: openai.OpenAI, finished_job: Any) -> None:
    (file_id,) = finished_job.result_files
    assert server.files.retrieve(file_id).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(server.files.content(file_id).text)))
    assert [int(r["step"]) for r in rows] == list(range(1, 13)) and all(
        float(r["train_loss"]) > 0 for r in rows
    )


def test_listing_jobs_ends_and_filters_by_metadata(server: openai.OpenAI, finished_job: Any) -> None:
    seen = [job.id for job in server.fine_tuning.jobs.list(limit=1)]  # one per page: has_more must end it
    assert finished_job.id in seen and len(seen) == len(set(seen))
    assert [j.id for j in server.fine_tuning.jobs.list(metadata={"team": "tests"})] == [finished_job.id]
    assert list(server.fine_tuning.jobs.list(metadata={"team": "nobody"})) == []


def _core_answer(job: Any, prompt: str, max_tokens: int) -> str:
    trained = load_trained(Path(job.tunelab["run_dir"]), precision="fp32")
    ids = encode_chat(trained.tokenizer, [{"role": "user", "content": prompt}])
    (answer,) = generate_batch(trained.model, trained.tokenizer, [ids], max_new_tokens=max_tokens)
    return answer


def test_chat_answers_as_the_generation_core_does_streamed_or_not(
    server: openai.OpenAI, finished_job: Any
) -> None:
    model, prompt = finished_job.fine_tuned_model, "Count on from 5"
    messages = [{"role": "user", "content": prompt}]
    whole = server.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
    (choice,) = whole.choices
    assert choice.message.content.strip() == _core_answer(finished_job, prompt, 12)
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 0
    stream = server.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stop_strings_and_n_choices(server: openai.OpenAI, finished_job: Any) -> None:
    model = finished_job.fine_tuned_model
    messages = [{"role": "user", "content": "Count on from 5"}]
    full = server.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
    text = full.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = server.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=12, stop=[stop]
    )
    assert (
        cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    )
    several = server.chat.completions.create(
        model=model, messages=messages, temperature=0.8, max_tokens=6, n=3, seed=1
    )
    assert [c.index for c in several.choices] == [0, 1, 2]
    again = server.chat.completions.create(
        model=model, messages=messages, temperature=0.8, max_tokens=6, n=3, seed=1
    )
    assert [c.message.content for c in again.choices] == [
        c.message.content for c in several.choices
    ]  # seeded


def test_models_list_bases_and_fine_tuned_models_with_their_parent(
    server: openai.OpenAI, finished_job: Any
) -> None:
    models = {m.id: m for m in server.models.list()}
    assert models["tiny"].parent is None
    assert models[finished_job.fine_tuned_model].parent == "tiny"
    assert server.models.retrieve(finished_job.fine_tuned_model).id == finished_job.fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        server.models.retrieve("ft:tiny:tunelab::nothing")


def test_completions_continue_text(server: openai.OpenAI, finished_job: Any) -> None:
    reply = server.completions.create(
        model=finished_job.fine_tuned_model, prompt="Count", max_tokens=5, temperature=0
    )
    assert reply.object == "text_completion" and reply.usage.completion_tokens <= 5
    streamed = server.completions.create(
        model=finished_job.fine_tuned_model, prompt="Count", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == reply.choices[0].text


@pytest.fixture(scope="module")
def dpo_job(server: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Any:
    rows = [
        {"input": {"messages": [{"role": "user", "content": f"Count on from {i}"}]},
         "preferred_output": [{"role": "assistant", "content": f"{i + 1} {i + 2}"}],
         "non_preferred_output": [{"role": "assistant", "content": "I cannot count."}]}
        for i in range(8)
    ]  # fmt: skip
    training = upload(server, tmp_path_factory.mktemp("dpo") / "dpo.jsonl", rows)
    job = server.fine_tuning.jobs.create(
        model="tiny", training_file=training.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
    )  # fmt: skip
    assert job.method.dpo.hyperparameters.beta == 0.2
    return wait_for(server, job.id)


def test_a_dpo_job_on_openai_preference_rows(dpo_job: Any) -> None:
    assert dpo_job.status == "succeeded", dpo_job.error
    recipe = (Path(dpo_job.tunelab["run_dir"]) / "recipe.yaml").read_text()
    assert "task: preference" in recipe and "beta: 0.2" in recipe


def test_adapters_of_one_base_share_it_and_each_answers_as_its_own_run(
    server: openai.OpenAI, finished_job: Any, dpo_job: Any, tiny_llama: Path
) -> None:
    prompt = "Count on from 9"
    for job in (finished_job, dpo_job, finished_job):  # switching back and forth
        reply = server.chat.completions.create(
            model=job.fine_tuned_model,
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=10,
        )
        assert reply.choices[0].message.content.strip() == _core_answer(job, prompt, 10)
    # The base itself, with every adapter off, continues text as the untouched base does.
    base = server.completions.create(model="tiny", prompt="Count on", temperature=0, max_tokens=6)
    from tunelab.models.restore import load_base

    plain = load_base(str(tiny_llama), precision="fp32")
    ids = plain.tokenizer("Count on")["input_ids"]
    (expected,) = generate_batch(plain.model, plain.tokenizer, [ids], max_new_tokens=6)
    assert base.choices[0].text.strip() == expected
    metrics = httpx.get(str(server.base_url).removesuffix("/v1/") + "/metrics").text
    assert "tunelab_loaded_bases 1\n" in metrics and "tunelab_loaded_adapters 2\n" in metrics
