"""/v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/classifications.

Chat prompts are rendered with the model's training chat template (the tokenizer saved in final/)
and, when the conversation has no system turn, the run's system prompt, as `tunelab chat` does.
Generation goes through the batching engine; streams are OpenAI's SSE chunks ending in `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tunelab.generation import encode_chat
from tunelab.serving.engine import Engine, Row, Sampling
from tunelab.serving.errors import APIError
from tunelab.serving.models import ModelPool, Served
from tunelab.serving.tool_calling import ToolUse, assistant_message, conversation, stream_deltas, tool_use

log = logging.getLogger("tunelab.serve")
DEFAULT_MAX_TOKENS = 256  # OpenAI's default is "until the context ends"; a bound keeps CPU servers usable


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampled(BaseModel):
    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self, limit: int | None = None) -> Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop: at most 4 sequences", param="stop")
        tokens = limit or self.max_tokens or DEFAULT_MAX_TOKENS
        return Sampling(self.temperature, self.top_p, tokens, tuple(stops), self.seed)


class ChatRequest(_Sampled):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    temperature: float = Field(1.0, ge=0, le=2)


class TextsRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"  # the openai client asks for base64

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def router(pool: ModelPool, engine: Engine, log_prompts: bool = False) -> APIRouter:
    api = APIRouter()

    def logged(kind: str, request: BaseModel) -> None:
        if log_prompts:  # users' data: only when the server's settings ask for it
            log.info("%s %s", kind, request.model_dump_json(exclude_none=True))

    @api.get("/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": pool.listing()}

    @api.get("/models/{model:path}")
    def retrieve_model(model: str) -> dict[str, Any]:
        return pool.describe(model)

    @api.post("/chat/completions")
    async def chat(request: ChatRequest) -> Any:
        logged("chat", request)
        return await chat_completion(pool, engine, request)

    @api.post("/completions")
    async def completions(request: CompletionRequest) -> Any:
        logged("completion", request)
        served = await _generative(pool, request.model)
        texts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        prompts = [served.tokenizer(text)["input_ids"] for text in texts]
        return await _answer(engine, served, prompts, request.sampling(), request, chat=False)

    @api.post("/embeddings")
    async def embeddings(request: TextsRequest) -> dict[str, Any]:
        from tunelab.serving.scoring import embed

        vectors, tokens = await asyncio.to_thread(embed, pool, request.model, request.texts())
        encoded: list[Any] = vectors
        if request.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
            encoded = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(encoded)]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": request.model, "usage": usage}

    @api.post("/classifications")
    async def classifications(request: TextsRequest) -> dict[str, Any]:
        from tunelab.serving.scoring import classify

        results = await asyncio.to_thread(classify, pool, request.model, request.texts())
        data = [{"object": "classification", "index": i, **r} for i, r in enumerate(results)]
        return {"object": "list", "data": data, "model": request.model}

    return api


async def chat_completion(pool: ModelPool, engine: Engine, request: ChatRequest) -> Any:
    """A chat completion (a stream when asked); the dashboard's playground calls it too."""
    served = await _generative(pool, request.model)
    if getattr(served.tokenizer, "chat_template", None) is None:  # a base model without one: say so, not 500
        raise APIError(
            400,
            f"{request.model} has no chat template: use /v1/completions, or a model fine-tuned "
            "with a template",
            param="model",
            code="no_chat_template",
        )
    messages, tools = conversation(_plain(request.messages), request.tools, request.parallel_tool_calls)
    use = tool_use(served.tokenizer, request.model, tools, request.tool_choice, request.parallel_tool_calls)
    # tool_choice required, or a named function: the answer starts inside a call (ToolUse.forced).
    tools, forced = (use.tools, use.forced) if use else (None, "")
    prompt = encode_chat(served.tokenizer, _with_system(served, messages), tools, forced)
    sampling = request.sampling(request.max_completion_tokens)
    return await _answer(engine, served, [prompt], sampling, request, chat=True, tools=use)


async def _generative(pool: ModelPool, name: str) -> Served:
    pool.describe(name)  # 404 for a name the server does not know
    served = await asyncio.to_thread(pool.get, name)  # the first request loads it: not on the event loop
    if not served.trained.generative:
        raise APIError(
            400,
            f"{name} is a {served.trained.task} model: use /v1/classifications",
            param="model",
            code="model_not_generative",
        )
    return served


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's message variants the data reader does not take, made plain: content parts joined into text,
    the `developer` role as system."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):  # content parts: [{type: text, text}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        role = "system" if message.get("role") == "developer" else message.get("role")
        out.append({**message, "role": role, **({"content": content} if "content" in message else {})})
    return out


def _with_system(served: Served, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's system prompt first, when the conversation brings none (as `tunelab chat` does)."""
    system = served.trained.info.get("system_prompt")
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


async def _answer(
    engine: Engine,
    served: Served,
    prompts: list[list[int]],
    sampling: Sampling,
    request: _Sampled,
    *,
    chat: bool,
    tools: ToolUse | None = None,
) -> Any:
    loop = asyncio.get_running_loop()
    rows = [
        Row(served, prompt, sampling, loop, asyncio.Queue()) for prompt in prompts for _ in range(request.n)
    ]
    engine.submit(rows)
    reply = _Reply(request.model, chat, sum(len(p) for p in prompts), tools)
    if request.stream:
        usage = bool(request.stream_options and request.stream_options.include_usage)
        return StreamingResponse(reply.stream(rows, usage), media_type="text/event-stream")
    return await reply.whole(rows)


class _Reply:
    """One request's answer, whole or as chunks, in OpenAI's chat or text-completion objects."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int, tools: ToolUse | None = None):
        self.model, self.chat, self.prompt_tokens, self.tools = model, chat, prompt_tokens, tools
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    async def whole(self, rows: list[Row]) -> dict[str, Any]:
        choices, completion = [], 0
        for index, row in enumerate(rows):
            text, reason, tokens = await _collect(row)
            completion += tokens
            choices.append(self._choice(index, text, reason))
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self._usage(completion),
            "system_fingerprint": None,
        }

    async def stream(self, rows: list[Row], include_usage: bool) -> AsyncIterator[str]:
        completion = 0
        if self.chat:
            for index in range(len(rows)):
                yield self._chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ],
                    include_usage,
                )
        # With tools, an answer's text is held until it ends: only then is it known to be a call or prose.
        held: dict[int, list[str]] = {i: [] for i in range(len(rows))} if self.tools is not None else {}
        pending = {asyncio.ensure_future(row.events.get()): i for i, row in enumerate(rows)}
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                kind, *rest = future.result()
                if kind == "error":
                    yield f"data: {json.dumps({'error': {'message': rest[0], 'type': 'server_error'}})}\n\n"
                    continue
                if kind == "text":
                    if held:
                        held[index].append(rest[0])
                    else:
                        yield self._chunk([self._delta(index, rest[0], None)], include_usage)
                    pending[asyncio.ensure_future(rows[index].events.get())] = index
                    continue
                completion += rest[1]  # end
                for chunk in self._ending(index, "".join(held.get(index, [])), rest[0], include_usage):
                    yield chunk
        if include_usage:
            yield self._chunk([], False, usage=self._usage(completion))
        yield "data: [DONE]\n\n"

    def _ending(self, index: int, held: str, reason: str, include_usage: bool) -> list[str]:
        """The last chunks of a streamed answer: with tools, the held text as content or tool-call deltas
        (finish_reason tool_calls for a call); else only the finish."""
        if self.tools is None:
            return [self._chunk([self._delta(index, "", reason)], include_usage)]
        message, calls = assistant_message(held, self.tools)
        deltas = stream_deltas(message) if calls else [{"content": message["content"]}] if held else []
        chunks = [
            self._chunk(
                [{"index": index, "delta": d, "finish_reason": None, "logprobs": None}], include_usage
            )
            for d in deltas
        ]
        finish = "tool_calls" if calls and reason == "stop" else reason
        return [*chunks, self._chunk([self._delta(index, "", finish)], include_usage)]

    def _choice(self, index: int, text: str, reason: str) -> dict[str, Any]:
        if self.chat:
            message, calls = assistant_message(text, self.tools)
            reason = "tool_calls" if calls and reason == "stop" else reason
            return {"index": index, "message": message, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}

    def _delta(self, index: int, text: str, reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta = {"content": text} if text else {}
            return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}

    def _chunk(self, choices: list[dict[str, Any]], with_usage_field: bool, usage: Any = None) -> str:
        body = {
            "id": self.id,
            "object": f"{self.object}.chunk" if self.chat else self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if with_usage_field or usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def _usage(self, completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


async def _collect(row: Row) -> tuple[str, str, int]:
    parts = []
    while True:
        kind, *rest = await row.events.get()
        if kind == "text":
            parts.append(rest[0])
        elif kind == "error":
            raise APIError(500, f"generation failed: {rest[0]}", code="generation_failed")
        else:
            return "".join(parts), rest[0], rest[1]
