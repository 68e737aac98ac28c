"""`create_app`: the FastAPI application of an OpenAI-compatible steering server.

Routes (all but ``/health`` need the API key when one is configured):

=========================  ===================================================
``GET /health``            liveness, load, model name
``GET /v1/models``         the served model (OpenAI list format)
``GET /v1/vectors``        name, layers, norms and metadata of each vector
``POST /v1/chat/completions``  chat completion, ``stream: true`` for SSE
``POST /v1/completions``   text completion, ``stream: true`` for SSE
``POST /v1/steering/read``  per-token projections onto a vector (`reading`)
``GET /metrics``           Prometheus text
``GET /``                  the playground page (static files, no key needed)
=========================  ===================================================

``GET /openapi.json`` (open, like ``/health``) describes the request bodies,
the ``steering`` field included.

Handlers run on the event loop and never touch the model: they validate,
tokenise, and hand `GenerationRequest`s to the `Engine` thread, whose events
come back through an ``asyncio.Queue`` per HTTP call. A call is admitted
whole or answered 503 with ``Retry-After``; when its client goes away, its
rows are cancelled at the next step (a non-streamed call has a task watching
the connection for ``http.disconnect``; a streamed one learns it from the
failed send).

Draining (`ServerState.drain`, on SIGTERM in `serve`): new completions get a
503 ``shutting_down``; calls in flight get ``drain_timeout_s`` to finish, then
the engine stops and each one ends with an OpenAI-style error (a streamed one
with an error event and ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Scope, Send
from torch import nn

from steering.hooks import num_layers

from .. import __version__
from .config import ServerConfig
from .engine import Engine, EngineBusy, EngineClosed, Event, Failed, Finished, TextDelta
from .errors import APIError, from_validation_errors
from .http import MetricsMiddleware, check_api_key, install_error_handlers, install_openapi, read_json
from .metrics import ServerMetrics
from .playground import add_playground
from .reading import ReadRequest, prepare_read, project, reading_body
from .responses import DONE, ResponseShape, sse
from .schemas import ChatCompletionRequest, CompletionRequest
from .text import Codec
from .validate import Prepared, ServingContext, model_context_length, prepare_chat, prepare_completion
from .vector_store import VectorStore

ROUTES = frozenset(
    {
        "/health",
        "/openapi.json",
        "/v1/models",
        "/v1/vectors",
        "/v1/chat/completions",
        "/v1/completions",
        "/metrics",
        "/v1/steering/read",
        "/",
    }
)


@dataclass
class ServerState:
    """Everything the handlers share (one per app)."""

    config: ServerConfig
    engine: Engine
    ctx: ServingContext
    metrics: ServerMetrics
    api_key: str | None
    started: int
    in_progress: int = 0  # engine requests of HTTP calls not yet closed
    draining: bool = False
    loop: asyncio.AbstractEventLoop | None = None  # the app's event loop, once started

    async def drain(self) -> None:
        """Stop admitting; give calls in flight ``drain_timeout_s``, then end them and stop the engine."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self.in_progress and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # Rows still running get `Failed(EngineClosed)`: streams send an error event and [DONE].
        await asyncio.to_thread(self.engine.close)

    def drain_soon(self) -> None:
        """Start `drain` on the app's loop; callable from any thread or a signal handler."""
        if self.loop is None or self.draining:
            return
        self.draining = True
        self.loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        task = asyncio.get_running_loop().create_task(self.drain())
        _background.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


def eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """Token ids that end a completion: the generation config's, else the tokenizer's EOS."""
    value = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


EngineFactory = Callable[[Codec, ServerMetrics], Any]
"""Builds another engine with `Engine`'s interface (``steering.vllm.VLLMEngine``) from the app's codec and metrics."""


def create_app(model: nn.Module, tokenizer: Any, config: ServerConfig, *, engine: EngineFactory | None = None) -> FastAPI:
    """Build the app serving ``model``; the engine thread starts with the app and stops with it.

    ``engine`` swaps the generation engine (default: the HF `Engine` on
    ``model``); ``model`` still checks the vectors and serves the reading endpoint.

    Example:
        >>> app = create_app(model, tok, ServerConfig(model_name="smollm2", vectors_dir=Path("vecs")))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    model.eval()
    codec = Codec(tokenizer, eos_ids(model, tokenizer))
    metrics = ServerMetrics()
    if engine is None:
        runner: Engine = Engine(model, codec, max_batch_size=config.max_batch_size, max_queue=config.max_queue, metrics=metrics)
    else:
        runner = engine(codec, metrics)
    store = VectorStore(config.vectors_dir, model, allow_model_mismatch=config.allow_model_mismatch)
    ctx = ServingContext(config, store, codec, model_context_length(model, config), num_layers(model))
    state = ServerState(config, runner, ctx, metrics, config.resolved_api_key(), int(time.time()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        runner.start()
        try:
            yield
        finally:
            await asyncio.to_thread(runner.close)

    app = FastAPI(title="steering", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serving = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    _add_routes(app, state)
    install_openapi(app, [ChatCompletionRequest, CompletionRequest])
    add_playground(app)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    def auth(request: Request) -> None:
        check_api_key(request, state.api_key)

    @app.get("/health")
    async def health() -> Response:
        running, waiting = state.engine.load
        body = {"status": "draining" if state.draining else "ok", "model": state.config.model_name, "running": running, "waiting": waiting}
        return JSONResponse(body, status_code=503 if state.draining else 200)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        auth(request)
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        auth(request)
        if model_id != state.config.model_name:
            served = state.config.model_name
            raise APIError(404, f"model {model_id!r} does not exist; this server serves {served!r}", param="model", code="model_not_found")
        return _model_card(state)

    @app.get("/v1/vectors")
    async def vectors(request: Request) -> dict[str, Any]:
        auth(request)
        good, bad = await asyncio.to_thread(state.ctx.store.describe)
        return {"object": "list", "data": good, "errors": bad}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        auth(request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat(request: Request) -> Response:
        auth(request)
        body = _parse(ChatCompletionRequest, await read_json(request, state.config.max_body_bytes))
        prepared = await asyncio.to_thread(prepare_chat, body, state.ctx)  # tokenising is not the loop's job
        return await _complete(state, request, ResponseShape.new("chat", body.model), prepared, body.stream, _usage_asked(body))

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        auth(request)
        body = _parse(CompletionRequest, await read_json(request, state.config.max_body_bytes))
        prepared = await asyncio.to_thread(prepare_completion, body, state.ctx)
        return await _complete(state, request, ResponseShape.new("text", body.model), prepared, body.stream, _usage_asked(body))

    @app.post("/v1/steering/read")
    async def read(request: Request) -> dict[str, Any]:
        auth(request)
        body = _parse(ReadRequest, await read_json(request, state.config.max_body_bytes))
        job = await asyncio.to_thread(prepare_read, body, state.ctx)
        try:
            projections = await asyncio.to_thread(state.engine.call, lambda model: project(model, job))
        except EngineClosed as exc:
            raise APIError(503, str(exc), code="shutting_down") from None
        return await asyncio.to_thread(reading_body, job, projections, state.ctx.codec.decode_token)


def request_body(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a route that parses its JSON body itself (see `install_openapi`)."""
    ref = {"$ref": f"#/components/schemas/{schema.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _model_card(state: ServerState) -> dict[str, Any]:
    return {
        "id": state.config.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "steering",
        "max_model_len": state.ctx.context_length,
    }


def _parse(schema: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        raise from_validation_errors(exc.errors()) from None


def _usage_asked(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


class _Call:
    """One HTTP call's engine requests: admission, events, and cancellation."""

    def __init__(self, state: ServerState, prepared: Prepared) -> None:
        self.state = state
        self.prepared = prepared
        self.queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()  # None: the client left
        self.open = set(range(len(prepared.requests)))
        self.ids: list[int] = []
        self._closed = False

    def submit(self) -> None:
        state, count = self.state, len(self.prepared.requests)
        retry = {"Retry-After": str(state.config.retry_after_s)}
        limit = state.config.max_concurrent_requests
        if state.draining:
            raise APIError(503, "the server is shutting down; retry on another instance", code="shutting_down", headers=retry)
        if state.in_progress + count > limit:
            raise APIError(
                503,
                f"server busy: {state.in_progress} requests in progress (max_concurrent_requests={limit}); retry later",
                code="server_busy",
                headers=retry,
            )
        loop = asyncio.get_running_loop()
        try:
            self.ids = state.engine.submit(self.prepared.requests, [self._sink(loop, i) for i in range(count)])
        except EngineBusy as exc:
            raise APIError(503, f"{exc}; retry later", code="server_busy", headers=retry) from None
        except EngineClosed as exc:
            raise APIError(503, str(exc), code="shutting_down", headers=retry) from None
        state.in_progress += count

    def _sink(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[Event], None]:
        def sink(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                pass

        return sink

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Events until every request finished, or the client left (see `watch`)."""
        while self.open:
            index, event = await self.queue.get()
            if event is None:
                return
            if index not in self.open:
                continue
            if isinstance(event, (Finished, Failed)):
                self.open.discard(index)
            yield index, event

    def watch(self, request: Request) -> asyncio.Task[None]:
        """A task that ends `events` as soon as the client disconnects (cancel it when done).

        The body has been read, so the next ASGI message is ``http.disconnect``,
        sent when the client goes away (or once the response is complete).
        """

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            self.queue.put_nowait((-1, None))

        return asyncio.create_task(watch())

    def close(self) -> None:
        """Cancel what is unfinished and free the admission slots (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.open and self.ids:
            self.state.engine.cancel([self.ids[i] for i in sorted(self.open)])
        if self.ids:
            self.state.in_progress -= len(self.prepared.requests)


def _failure(event: Failed) -> APIError:
    if isinstance(event.error, EngineClosed):
        return APIError(503, str(event.error), code="shutting_down")
    return APIError(500, f"generation failed: {type(event.error).__name__}: {event.error}", code="generation_failed")


async def _complete(state: ServerState, request: Request, shape: ResponseShape, prepared: Prepared, stream: bool, usage: bool) -> Response:
    call = _Call(state, prepared)
    call.submit()  # before any byte is sent, so a 503 is a status, not a broken stream
    if stream:
        return _EventStream(_stream(call, shape, usage), on_close=call.close)
    finals: dict[int, Finished] = {}
    watcher = call.watch(request)
    try:
        async for index, event in call.events():
            if isinstance(event, Failed):
                raise _failure(event)
            if isinstance(event, Finished):
                finals[index] = event
    finally:
        watcher.cancel()
        call.close()
    if len(finals) < len(prepared.requests):  # the client left; this answer reaches no one
        return Response(status_code=499)
    ordered = [finals[i] for i in range(len(prepared.requests))]
    return JSONResponse(shape.body(ordered, prepared.prompt_tokens))


async def _stream(call: _Call, shape: ResponseShape, usage: bool) -> AsyncIterator[str]:
    finals: dict[int, Finished] = {}
    if shape.kind == "chat":
        for index in range(len(call.prepared.requests)):
            yield shape.chunk(index, "", role=True, with_usage_field=usage)
    async for index, event in call.events():
        if isinstance(event, TextDelta):
            yield shape.chunk(index, event.text, with_usage_field=usage)
        elif isinstance(event, Finished):
            finals[index] = event
            yield shape.chunk(index, None if shape.kind == "chat" else "", finish_reason=event.finish_reason, with_usage_field=usage)
        else:
            yield sse(_failure(event).body())
            break
    if usage and len(finals) == len(call.prepared.requests):
        yield shape.usage_chunk(call.prepared.prompt_tokens, [finals[i] for i in sorted(finals)])
    yield DONE


class _EventStream(StreamingResponse):
    """An SSE response that runs ``on_close`` however it ends (even if never started)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
