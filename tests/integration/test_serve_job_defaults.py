"""A job's settings come from the server, not the request: they must fit the base model it names."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.serving import JOB_DEFAULTS, client, counting_chats, live_server, serve_config, upload, wait_for


def test_a_job_on_a_base_with_fewer_positions_than_the_default_length_trains_at_its_length(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # The server's own default (1024) applies: the tiny Llama has 256 positions, which no request can change.
    defaults = {
        **JOB_DEFAULTS,
        "train": {k: v for k, v in JOB_DEFAULTS["train"].items() if k != "max_seq_len"},
    }
    config = serve_config(tmp_path / "serve", tiny_llama, job_defaults=defaults)
    with live_server(config) as (url, key):
        api = client(url, key)
        training = upload(api, tmp_path / "train.jsonl", counting_chats(8))
        job = api.fine_tuning.jobs.create(model="tiny", training_file=training.id)
        done = wait_for(api, job.id)
        assert done.status == "succeeded", done.error
        events = [e.message for e in api.fine_tuning.jobs.list_events(job.id, limit=1000)]
    recipe = yaml.safe_load((config.root / "jobs" / job.id / "recipe.yaml").read_text(encoding="utf-8"))
    assert recipe["train"]["max_seq_len"] == 256
    assert (
        "train.max_seq_len 1024 is more than the base model has positions for; the job trains on sequences "
        "of up to 256 tokens"
    ) in events
