"""Continuous request batching for chat and completions: requests that arrive together share forward
passes.

Every request becomes one row per choice (`n`). A single engine thread takes the rows waiting in its
queue (up to `max_batch`, waiting `batch_window_ms` for company), groups them by model and sampling
settings, and runs each group as one `model.generate` call of the generation core's layout (left
padding, stop tokens). A streamer fans each step's tokens out to the rows: each row cuts itself at a
stop token, a stop string or its own max_tokens, and the batch ends when every row has. Tokens reach
a streaming client as they are decoded.

Why not vLLM: it needs a GPU and its own model loading; this keeps CPU serving, tunelab's restore
path (chat template, adapters) and the same stops as `tunelab chat`. For scale, exported adapters
load in vLLM (docs/serving.md, "Beyond one machine").
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tunelab.generation import decoding, left_pad, stop_token_ids
from tunelab.serving.errors import APIError
from tunelab.serving.models import ModelPool, Served


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def group_key(self) -> tuple[Any, ...]:
        # Rows of one generate call share temperature and top_p; a seeded row runs alone, so its
        # random draws depend on nothing but its seed.
        return (self.temperature, self.top_p if self.temperature > 0 else None, self.seed)


@dataclass
class Row:
    """One answer being generated; `events` receives ("text", str) pieces then ("end", reason, n)."""

    served: Served
    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[Any, ...]]
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already handed out
    done: bool = False

    def emit(self, *item: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Engine:
    def __init__(self, pool: ModelPool, max_batch: int, window_ms: float, max_pending: int = 256):
        self.pool, self.max_batch, self.window_s = pool, max_batch, window_ms / 1000
        self.max_pending = max_pending
        self._queue: queue.Queue[Row | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self.batches = 0  # generate calls so far (exposed in /metrics)
        self.rows = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def submit(self, rows: list[Row]) -> None:
        """Queue a request's rows, or refuse them all (429) when the queue is full: a client told to
        retry later is better than one whose request waits past its timeout."""
        if self._queue.qsize() + len(rows) > self.max_pending:
            raise APIError(
                429,
                f"The server is busy: {self._queue.qsize()} answers are waiting; retry later",
                code="rate_limit_exceeded",
            )
        for row in rows:
            self._queue.put(row)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    row = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if row is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(row)
            for group in _groups(batch):
                self._run(group)

    def _run(self, rows: list[Row]) -> None:
        try:
            _generate(self.pool, rows)
            self.batches, self.rows = self.batches + 1, self.rows + len(rows)
        except Exception as exc:  # a failed batch fails its requests, not the engine
            for row in rows:
                if not row.done:
                    row.done = True
                    row.emit("error", f"{type(exc).__name__}: {exc}")


def _groups(batch: list[Row]) -> list[list[Row]]:
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in batch:
        groups.setdefault((row.served.name, *row.sampling.group_key()), []).append(row)
    return list(groups.values())


@torch.no_grad()
def _generate(pool: ModelPool, rows: list[Row]) -> None:
    served, sampling = rows[0].served, rows[0].sampling
    tokenizer = served.tokenizer
    stops = stop_token_ids(tokenizer, getattr(served.model, "generation_config", None))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    input_ids, attention_mask = left_pad([row.prompt for row in rows], pad_id)
    fan_out = _FanOut(rows, tokenizer, set(stops))
    longest = max(row.sampling.max_tokens for row in rows)
    settings = decoding(longest, sampling.temperature, stops, pad_id, top_p=sampling.top_p, top_k=0)
    device = next(served.model.parameters()).device
    with pool.lock_for(served), served.active(), served.trained.precision.autocast(device.type):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        served.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            streamer=fan_out,
            stopping_criteria=StoppingCriteriaList([_AllDone(rows)]),
            **settings,
        )
    for row in rows:
        if not row.done:
            fan_out.finish(row, "length")


class _FanOut(BaseStreamer):
    """generate's streamer: the prompt first (skipped), then one new token per row at each step."""

    def __init__(self, rows: list[Row], tokenizer: Any, stops: set[int]):
        self.rows, self.tokenizer, self.stops = rows, tokenizer, stops
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(len(self.rows), -1)[:, -1].tolist(), strict=True):
            if not row.done:
                self._step(row, int(token))

    def end(self) -> None:
        pass

    def _step(self, row: Row, token: int) -> None:
        if token in self.stops:
            row.tokens.append(token)
            self.finish(row, "stop", counted=len(row.tokens))
            return
        row.tokens.append(token)
        text = self._text(row)
        cut = _first_stop(text, row.sampling.stop)
        if cut is not None:
            self.finish(row, "stop", text=text[:cut])
        elif len(row.tokens) >= row.sampling.max_tokens:
            self.finish(row, "length", text=text)
        else:
            # Hold back what may be the start of a stop string, and a half-decoded character.
            hold = max((len(s) - 1 for s in row.sampling.stop), default=0)
            ready = text.rstrip("\ufffd")
            self._send(row, ready[: max(len(ready) - hold, row.sent)])

    def finish(self, row: Row, reason: str, *, text: str | None = None, counted: int | None = None) -> None:
        if text is None:
            text = self._text(row, drop_stop=True)
        self._send(row, text)
        row.done = True
        row.emit("end", reason, counted if counted is not None else len(row.tokens))

    def _text(self, row: Row, drop_stop: bool = False) -> str:
        tokens = row.tokens[:-1] if drop_stop and row.tokens and row.tokens[-1] in self.stops else row.tokens
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    @staticmethod
    def _send(row: Row, text: str) -> None:
        if len(text) > row.sent:
            row.emit("text", text[row.sent :])
            row.sent = len(text)


class _AllDone(StoppingCriteria):
    """Per-row done flags for generate: finished rows stop counting, the batch ends with the last."""

    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [at for at in (text.find(s) for s in stops if s) if at >= 0]
    return min(found) if found else None
