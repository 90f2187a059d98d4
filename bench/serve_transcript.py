"""The README's `tunelab serve` transcript: SmolLM2-135M-Instruct and the quickstart's contacts data,
driven by the official openai client exactly as a script written for OpenAI's API would be, with only
base_url changed. Prints each call and what came back.

    .venv/bin/python bench/serve_transcript.py --model $(.venv/bin/python -m tunelab.models.packaged smollm2-135m-instruct)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serving import client, live_server

from tunelab.serving.config import load_serve_config

REPO = Path(__file__).resolve().parents[1]
# The quickstart recipe's settings (recipes/quickstart-contacts-lora.yaml), as the server's defaults.
QUICKSTART = {"method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": "auto"},
              "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "max_seq_len": 256, "log_every": 10,
                        "save_every": 20, "keep_last": 2, "warmup_ratio": 0.05}}  # fmt: skip
QUESTION = (
    "Extract the contact as one line of JSON with the keys name, company and city.\n\n"
    "From: Dana Whitfield\nCompany: Lumen Labs\nLocation: Porto"
)  # not in the training data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        config = load_serve_config(None, root=Path(root), models={"smollm2-135m-instruct": {"path": args.model}},
                                   job_defaults=QUICKSTART)  # fmt: skip
        with live_server(config) as (url, key):
            run(client(url, key))


def run(api: Any) -> None:  # an openai.OpenAI
    started = time.time()
    with (REPO / "examples/data/contacts_train.jsonl").open("rb") as handle:
        training = api.files.create(file=handle, purpose="fine-tune")
    print(
        f">>> client.files.create(file=open('contacts_train.jsonl', 'rb'), purpose='fine-tune')\n{training}\n"
    )
    job = api.fine_tuning.jobs.create(
        model="smollm2-135m-instruct", training_file=training.id, suffix="contacts"
    )
    print(
        f">>> client.fine_tuning.jobs.create(model='smollm2-135m-instruct', training_file={training.id!r}, "
        f"suffix='contacts')\n{job}\n"
    )
    seen = None
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = api.fine_tuning.jobs.retrieve(job.id)
        if job.status != seen:
            print(f"[{time.time() - started:6.0f} s] status {job.status}")
            seen = job.status
    print(f"\n>>> client.fine_tuning.jobs.retrieve({job.id!r})\n{job}\n")
    print(f">>> for event in reversed(client.fine_tuning.jobs.list_events({job.id!r}, limit=12).data)")
    for event in reversed(api.fine_tuning.jobs.list_events(job.id, limit=12).data):
        print(f"  {event.level:5} {event.message}")
    print(f"\n>>> client.fine_tuning.jobs.checkpoints.list({job.id!r})")
    for ckpt in api.fine_tuning.jobs.checkpoints.list(job.id):
        print(
            f"  {ckpt.id} step {ckpt.step_number}: train_loss {ckpt.metrics.train_loss:.4f} "
            f"-> {ckpt.fine_tuned_model_checkpoint}"
        )
    messages = [{"role": "user", "content": QUESTION}]
    for model in ("smollm2-135m-instruct", job.fine_tuned_model):
        reply = api.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=48)
        print(
            f"\n>>> client.chat.completions.create(model={model!r}, messages=[{QUESTION!r}], temperature=0)"
        )
        print(
            f"  {reply.choices[0].message.content!r}  ({reply.usage.completion_tokens} tokens, "
            f"{reply.choices[0].finish_reason})"
        )
    stream = api.chat.completions.create(model=job.fine_tuned_model, messages=messages, temperature=0,
                                         max_tokens=48, stream=True)  # fmt: skip
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    print(f"\n>>> stream=True: {len(pieces)} chunks: {''.join(pieces)!r}")
    print(
        f"\n>>> [j.id for j in client.fine_tuning.jobs.list()]\n  {[j.id for j in api.fine_tuning.jobs.list()]}"
    )
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
