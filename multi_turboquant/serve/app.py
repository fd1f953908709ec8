"""The OpenAI-compatible routes over an `EngineLoop`."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send
from vllm import PoolingParams, SamplingParams
from vllm.exceptions import VLLMClientError
from vllm.inputs import tokens_input
from vllm.sampling_params import RequestOutputKind

from .engine_loop import EngineDead, EngineLoop, RequestRefused, RequestStream
from .guard import Guard, Limits
from .prompts import Prompts
from .protocol import APIError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RequestT, \
    SamplingRequest, parse_request

T = TypeVar("T")


@dataclass
class ServedModel:
    name: str
    tasks: tuple[str, ...]  # the engine's supported tasks: "generate", or "embed" for a pooling model
    prompts: Prompts
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))


@dataclass
class _Completion:
    """Text and token count of one request, accumulated over its outputs (deltas, or one final output)."""

    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None

    def add(self, output: Any) -> str:
        """Accumulate `output`; returns its new text."""
        choice = output.outputs[0]
        self.text += choice.text
        self.tokens += len(choice.token_ids)
        self.finish_reason = choice.finish_reason
        return choice.text


@dataclass(frozen=True)
class _Shape:
    """How /v1/completions or /v1/chat/completions renders a choice, whole or as a stream chunk."""

    id_prefix: str
    object: str
    chunk_object: str
    chat: bool

    def choice(self, text: str, finish_reason: str | None, *, chunk: bool, first: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if not chunk:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


COMPLETION = _Shape("cmpl", "text_completion", "text_completion", chat=False)
CHAT = _Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat=True)


class _EventStream(StreamingResponse):
    """Server-sent events that leave `stack` (aborting an unfinished request) however the response ends."""

    def __init__(self, events: AsyncIterator[str], stack: contextlib.AsyncExitStack) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._stack:
            await super().__call__(scope, receive, send)


async def _collect(stream: RequestStream) -> _Completion:
    done = _Completion()
    async for output in stream:
        done.add(output)
    return done


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _usage(n_prompt: int, n_completion: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or cancel it when the client disconnects first (its request is then aborted)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise APIError(499, "the client disconnected", code="client_disconnected")
    return task.result()


def _engine_error(exc: EngineDead | RequestRefused) -> APIError:
    if isinstance(exc, EngineDead):
        return APIError(503, str(exc), type="server_error", code="engine_unavailable")
    cause = exc.__cause__
    if isinstance(cause, (ValueError, VLLMClientError)):
        return APIError(400, str(exc), param=getattr(cause, "parameter", None))
    return APIError(500, f"the engine refused the request: {cause!r}", type="server_error")


def resident_bytes() -> int | None:
    """This process's resident memory (Linux's /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def create_app(engine: EngineLoop, model: ServedModel, limits: Limits = Limits()) -> FastAPI:
    """The app behind `limits`; its lifespan starts and stops the engine thread."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="mtq serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, limits=limits)

    @app.exception_handler(APIError)
    @app.exception_handler(EngineDead)
    @app.exception_handler(RequestRefused)
    @app.exception_handler(HTTPException)
    @app.exception_handler(Exception)
    async def error(request: Request, exc: Exception) -> JSONResponse:
        """Every error in OpenAI's shape."""
        if isinstance(exc, (EngineDead, RequestRefused)):
            exc = _engine_error(exc)
        elif isinstance(exc, HTTPException):
            exc = APIError(exc.status_code, f"{exc.detail} ({request.method} {request.url.path})")
        elif not isinstance(exc, APIError):
            exc = APIError(500, repr(exc), type="server_error")
        return JSONResponse(exc.body(), status_code=exc.status)

    async def parse(request: Request, cls: type[RequestT], task: str) -> RequestT:
        """The request body as `cls`, for the served model, which must support `task`."""
        req = parse_request(cls, await request.body())
        if req.model != model.name:
            raise APIError(404, f"The model {req.model!r} does not exist; this server serves {model.name!r}",
                           param="model", code="model_not_found")
        if task not in model.tasks:
            hint = "is not an embedding model (serve it with --runner pooling --convert embed)" if task == "embed" \
                else "is an embedding model; use /v1/embeddings"
            raise APIError(400, f"model {model.name!r} {hint}", param="model", code="unsupported_task")
        return req

    async def complete(request: Request, req: SamplingRequest, prompt_ids: list[int], prompt_param: str,
                       shape: _Shape) -> Response:
        """The completion of `prompt_ids` (`prompt_param` names the prompt in errors), streamed or whole."""
        max_tokens = model.prompts.max_tokens(len(prompt_ids), req.max_tokens_or_default(), prompt_param)
        try:
            params = SamplingParams(max_tokens=max_tokens, **req.sampling_kwargs(),
                                    output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        request_id = f"{shape.id_prefix}-{uuid.uuid4().hex}"
        head = {"id": request_id, "created": int(time.time()), "model": model.name}
        if not req.stream:
            async with engine.generate(tokens_input(prompt_ids), params, request_id) as stream:
                done = await _unless_disconnected(request, _collect(stream))
            return JSONResponse({**head, "object": shape.object,
                                 "choices": [shape.choice(done.text, done.finish_reason, chunk=False)],
                                 "usage": _usage(len(prompt_ids), done.tokens)})

        stack = contextlib.AsyncExitStack()
        stream = await stack.enter_async_context(engine.generate(tokens_input(prompt_ids), params, request_id))

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": shape.chunk_object}
            if shape.chat:
                yield _sse({**chunk, "choices": [shape.choice("", None, chunk=True, first=True)]})
            done = _Completion()
            try:
                async for output in stream:
                    text = done.add(output)
                    if text or done.finish_reason:
                        yield _sse({**chunk, "choices": [shape.choice(text, done.finish_reason, chunk=True)]})
            except EngineDead as exc:
                yield _sse(_engine_error(exc).body())
                return
            if req.include_usage():
                yield _sse({**chunk, "choices": [], "usage": _usage(len(prompt_ids), done.tokens)})
            yield _sse("[DONE]")

        return _EventStream(events(), stack)

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {"status": "ok" if engine.alive else "error", "model": model.name,
                "engine": dataclasses.asdict(engine.stats), "rss_bytes": resident_bytes()}
        if engine.error is not None:
            body["error"] = repr(engine.error)
        return JSONResponse(body, status_code=200 if engine.alive else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": model.created,
                                            "owned_by": "multi-turboquant",
                                            "max_model_len": model.prompts.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = await parse(request, CompletionRequest, "generate")
        return await complete(request, req, model.prompts.completion(req.prompt), "prompt", COMPLETION)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = await parse(request, ChatCompletionRequest, "generate")
        return await complete(request, req, model.prompts.chat(req.messages), "messages", CHAT)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        req = await parse(request, EmbeddingRequest, "embed")
        prompts = [model.prompts.completion(item) for item in req.input]
        for ids in prompts:
            model.prompts.check_prompt(len(ids), "input", room=0)

        async def embed(ids: list[int]) -> list[float]:
            async with engine.generate(tokens_input(ids), PoolingParams(task="embed")) as stream:
                async for output in stream:
                    return output.outputs.data.float().tolist()
            raise EngineDead("the engine ended the request without an embedding")

        vectors = await _unless_disconnected(request, asyncio.gather(*(embed(ids) for ids in prompts)))

        def encode(vector: list[float]) -> list[float] | str:
            if req.encoding_format == "float":
                return vector
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()

        n_prompt = sum(map(len, prompts))
        return JSONResponse({"object": "list", "model": model.name,
                             "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                      for i, v in enumerate(vectors)],
                             "usage": {"prompt_tokens": n_prompt, "total_tokens": n_prompt}})

    return app
