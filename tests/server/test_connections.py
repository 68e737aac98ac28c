"""The HTTP layer around the engine: clients that leave, hostile bodies, 405s, the OpenAPI schema, draining."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import MODEL_NAME, post, sse_events, start_server, wait_until

from steering.server import BackgroundServer
from steering.server import app as app_module


def _count(server: BackgroundServer, reason: str) -> float:
    return server.app.state.serving.metrics.generations.labels(finish_reason=reason)._value.get()


@pytest.fixture
def slow_server(vecs: Path) -> Iterator[BackgroundServer]:
    """A server whose every forward pass takes 10 ms more, so long completions last seconds."""
    server = start_server(vecs, max_tokens_limit=400)
    engine = server.app.state.serving.engine
    forward = engine.model.forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)
        return forward(*args, **kwargs)

    engine.model.forward = slow
    try:
        yield server
    finally:
        server.stop()


def test_non_streamed_client_that_leaves_while_tokens_flow_is_cancelled(slow_server: BackgroundServer) -> None:
    state = slow_server.app.state.serving
    body = json.dumps({"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 300, "temperature": 0}).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    before = state.metrics.completion_tokens._value.get()
    with socket.create_connection(("127.0.0.1", slow_server.port)) as sock:
        sock.sendall(request)
        wait_until(lambda: state.metrics.completion_tokens._value.get() > before + 5, "tokens to flow")
    wait_until(lambda: state.in_progress == 0 and state.engine.load == (0, 0), "the disconnect to cancel the row")
    assert _count(slow_server, "cancelled") == 1 and _count(slow_server, "length") == 0


class _Python310Asyncio(types.ModuleType):
    """``asyncio`` as Python 3.10 has it: ``wait_for`` raises ``asyncio.TimeoutError``, not the builtin."""

    TimeoutError = type("TimeoutError", (Exception,), {})

    def __init__(self) -> None:
        super().__init__("asyncio")

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def wait_for(self, awaitable: Any, timeout: float | None) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            raise self.TimeoutError from None


def test_a_quiet_second_is_no_error_with_python_310_timeouts(server: BackgroundServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "asyncio", _Python310Asyncio())
    engine = server.app.state.serving.engine
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3, "temperature": 0}
    with ThreadPoolExecutor(1) as pool:
        with engine.paused():  # no event for over a second
            answer = pool.submit(post, server.url, "/v1/completions", body)
            wait_until(lambda: engine.load == (0, 1), "the request to queue")
            time.sleep(1.5)
        assert answer.result(timeout=60).status_code == 200


def _exchange(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict[str, Any], str | None]:
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read()), response.getheader("connection")


@pytest.fixture(scope="module")
def roomy_server(vecs: Path) -> Iterator[BackgroundServer]:
    """Default body limit (1 MiB): room for 100,000 brackets."""
    server = start_server(vecs)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("depth", [100_000, 900, 40])
def test_deeply_nested_json_is_400_and_the_connection_stays_usable(roomy_server: BackgroundServer, depth: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", roomy_server.port, timeout=60)
    try:
        status, body, connection = _exchange(conn, b'{"model": "tiny-llama", "logprobs": ' + b"[" * depth + b"]" * depth + b"}")
        assert status == 400, body
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == "invalid_json"
        assert "32 deep" in body["error"]["message"] and connection != "close"
        sock = conn.sock
        good = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        status, body, _ = _exchange(conn, json.dumps(good).encode())
        assert status == 200 and conn.sock is sock, "the keep-alive connection was not reused"
    finally:
        conn.close()


def test_405_names_the_allowed_methods(server: BackgroundServer) -> None:
    with httpx.Client(timeout=30) as http_client:
        response = http_client.get(server.url + "/v1/chat/completions")
        assert response.status_code == 405 and response.json()["error"]["message"]
        assert response.headers["allow"] == "POST"
        response = http_client.post(server.url + "/v1/models")
        assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_openapi_describes_the_real_request_bodies(server: BackgroundServer) -> None:
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    components = schema["components"]["schemas"]
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        body = schema["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert {"model", "steering", "max_tokens"} <= set(components[model]["properties"])
    steering = components["ChatCompletionRequest"]["properties"]["steering"]
    assert "vector" in steering["description"]
    term = components["SteeringTerm"]
    assert set(term["properties"]) == {"vector", "coef", "layers", "apply_to", "positions", "mode"} and term["required"] == ["vector"]
    assert term["properties"]["apply_to"]["enum"] == ["all", "prompt", "generated"]
    assert term["properties"]["positions"]["deprecated"] is True  # the old name, still accepted
    assert components["ChatCompletionRequest"]["required"] == ["model", "messages"]


def test_drain_refuses_new_calls_and_ends_open_streams_with_an_error_event(vecs: Path) -> None:
    server = start_server(vecs, drain_timeout_s=0.0)
    try:
        state = server.app.state.serving
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 20, "temperature": 0}
        with ThreadPoolExecutor(2) as pool:
            with state.engine.paused():  # in flight, not decoding: only the drain can end them
                stream = pool.submit(post, server.url, "/v1/completions", {**body, "stream": True})
                plain = pool.submit(post, server.url, "/v1/completions", body)
                wait_until(lambda: state.engine.load == (0, 2), "both calls to queue")
                asyncio.run_coroutine_threadsafe(state.drain(), state.loop).result(timeout=60)
            events = sse_events(stream.result(timeout=60))
            assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
            assert plain.result(timeout=60).status_code == 503
        refused = post(server.url, "/v1/completions", body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "draining"
    finally:
        server.stop()
