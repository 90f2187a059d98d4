"""`tunelab serve` throughput: tokens/s for N chat requests from C concurrent clients, with request
batching (max_batch B) against one request at a time (max_batch 1), on a real model.

    .venv/bin/python bench/serve_load.py --model $(.venv/bin/python -m tunelab.models.packaged smollm2-135m-instruct)

Greedy, max_tokens fixed, the same prompts in both modes; prints one JSON line per mode and checks
that batching changed no answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serving import client, live_server

from tunelab.serving.config import load_serve_config

QUESTIONS = [
    "Name a fruit that is yellow.", "What is the capital of France?", "Give me a synonym for happy.",
    "How many legs does a spider have?", "What colour is the sky on a clear day?", "Say hello in Spanish.",
    "What is 7 times 8?", "Name a planet in our solar system.",
]  # fmt: skip


def measure(model: str, max_batch: int, requests: int, clients: int, max_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        config = load_serve_config(None, root=Path(root), models={"m": {"path": model}}, max_batch=max_batch,
                                   batch_window_ms=10)  # fmt: skip
        with live_server(config) as (url, key):
            apis = [client(url, key) for _ in range(clients)]

            def ask(i: int) -> tuple[str, int]:
                question = f"{QUESTIONS[i % len(QUESTIONS)]} (request {i})"
                reply = apis[i % clients].chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": question}],
                    temperature=0,
                    max_tokens=max_tokens,
                )
                return reply.choices[0].message.content, reply.usage.completion_tokens

            ask(0)  # load the model and warm up before the clock starts
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(ask, range(requests)))
            wall = time.perf_counter() - started
    tokens = sum(n for _, n in answers)
    return {"max_batch": max_batch, "requests": requests, "clients": clients, "completion_tokens": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1), "answers": [a for a, _ in answers]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    alone = measure(args.model, 1, args.requests, args.clients, args.max_tokens)
    batched = measure(args.model, args.max_batch, args.requests, args.clients, args.max_tokens)
    same = sum(a == b for a, b in zip(alone.pop("answers"), batched.pop("answers"), strict=True))
    print(json.dumps(alone))
    print(json.dumps(batched))
    print(json.dumps({"speedup": round(batched["tokens_per_s"] / alone["tokens_per_s"], 2),
                      "identical_answers": f"{same}/{args.requests}"}))  # fmt: skip


if __name__ == "__main__":
    main()
