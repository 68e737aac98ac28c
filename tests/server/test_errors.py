"""Bad input: OpenAI-style error bodies with the right status, code and field; requests in flight unharmed.

The session server runs with ``max_tokens_limit=64``, ``max_coef=10``,
``max_vectors=3``, ``max_body_bytes=20000`` and the tiny model's context of
512 tokens.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from server_helpers import MODEL_NAME, PROMPTS, chat, post, start_server, wait_until
from tiny_models import make_tiny

import steering as st
from steering.server import API_KEY_ENV, APIError, Codec, ServerConfig, VectorStore
from steering.server.schemas import ChatCompletionRequest, CompletionRequest
from steering.server.validate import ServingContext, prepare_chat, prepare_completion


def _chat_body(**changes: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0, **changes}


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert error["param"] == param, error
    assert error["message"]
    return error


# (body changes, status, code, param, words the message must contain)
BAD_BODIES: list[tuple[dict[str, Any], int, str, str | None, tuple[str, ...]]] = [
    ({"steering": [{"vector": "nope", "coef": 1}]}, 404, "vector_not_found", "steering[0].vector", ("nope", "up")),
    ({"steering": [{"vector": "../up", "coef": 1}]}, 422, "invalid_vector_name", "steering[0].vector", ("../up",)),
    ({"steering": [{"vector": "/etc/passwd"}]}, 422, "invalid_vector_name", "steering[0].vector", ("/etc/passwd",)),
    ({"steering": [{"vector": "up", "coef": 1}, {"vector": "sub/up"}]}, 422, "invalid_vector_name", "steering[1].vector", ()),
    ({"steering": [{"vector": "broken"}]}, 422, "invalid_vector", "steering[0].vector", ("broken",)),
    ({"steering": [{"vector": "wide"}]}, 422, "invalid_vector", "steering[0].vector", ("hidden size",)),
    ({"steering": [{"vector": "up", "coef": 10.5}]}, 422, "coef_out_of_range", "steering[0].coef", ("10.5", "10")),
    ({"steering": [{"vector": "up", "coef": -11}]}, 422, "coef_out_of_range", "steering[0].coef", ("-11",)),
    ({"steering": [{"vector": "up", "coef": 1, "layers": [0]}]}, 422, "layer_not_in_vector", "steering[0].layers", ("layer 0", "[1, 2]")),
    ({"steering": [{"vector": "up", "coef": 1, "layers": []}]}, 422, "layer_not_in_vector", "steering[0].layers", ("empty",)),
    (
        {"steering": [{"vector": "up", "coef": 1, "layers": [-100]}]},
        422,
        "layer_not_in_vector",
        "steering[0].layers",
        ("-100", "out of range"),
    ),
    ({"steering": [{"vector": "up", "coef": 1, "positions": "middle"}]}, 422, "invalid_value", "steering[0].positions", ("middle",)),
    ({"steering": [{"vector": "up", "coeff": 1}]}, 422, "unknown_parameter", "steering[0].coeff", ()),
    ({"steering": [{"vector": "up", "mode": "erase"}]}, 422, "invalid_value", "steering[0].mode", ("erase",)),
    ({"steering": [{"vector": "up", "mode": "ablate", "coef": 2}]}, 422, "invalid_coef", "steering[0].coef", ("ablate",)),
    ({"steering": [{"vector": "up", "mode": "affine_ablate", "coef": 2}]}, 422, "invalid_coef", "steering[0].coef", ("affine_ablate",)),
    ({"steering": [{"vector": "up", "mode": "angular", "coef": 200}]}, 422, "coef_out_of_range", "steering[0].coef", ("degrees", "180")),
    ({"steering": [{"vector": "side", "mode": "affine_add"}]}, 422, "invalid_vector", "steering[0].vector", ("reference mean", "side")),
    ({"steering": [{"vector": "hollow", "mode": "clamp"}]}, 422, "invalid_vector", "steering[0].vector", ("zero at layers [2]", "clamp")),
    (
        {
            "steering": [
                {"vector": "up", "mode": "clamp", "coef": 2},
                {"vector": "side", "mode": "angular", "coef": 5, "apply_to": "prompt"},
            ]
        },
        422,
        "too_many_vectors",
        "steering[1].layers",
        ("layer 1", "clamp", "angular"),
    ),
    (
        {"steering": [{"vector": "up"}], "steering_condition": [{"vector": "side", "layer": 2, "threshold": 0.1}]},
        422,
        "layer_not_in_vector",
        "steering_condition[0].layer",
        ("[2]", "not in this vector"),
    ),
    (
        {"steering_condition": [{"vector": "side", "layer": 1, "threshold": 0.1}]},
        422,
        "invalid_value",
        "steering_condition",
        ("nothing to gate",),
    ),
    (
        {"steering": [{"vector": "up"}], "steering_condition": [{"vector": "side", "layer": 1, "threshold": 2}]},
        422,
        "invalid_value",
        "steering_condition[0].threshold",
        (),
    ),
    ({"steering": [{"vector": "hollow", "mode": "ablate"}]}, 422, "invalid_vector", "steering[0].vector", ("hollow", "zero at layers [2]")),
    ({"steering": [{"vector": "up"}] * 4}, 422, "too_many_vectors", "steering", ("4", "3")),
    ({"steering": {"vector": "up"}}, 422, "invalid_value", "steering", ()),
    ({"max_tokens": 65}, 422, "max_tokens_exceeded", "max_tokens", ("65", "64")),
    ({"max_completion_tokens": 100, "max_tokens": None}, 422, "max_tokens_exceeded", "max_completion_tokens", ()),
    ({"max_tokens": 0}, 422, "invalid_value", "max_tokens", ()),
    ({"max_tokens": "many"}, 422, "invalid_value", "max_tokens", ("many",)),
    ({"temperature": 2.5}, 422, "invalid_value", "temperature", ()),
    ({"top_p": 0}, 422, "invalid_value", "top_p", ()),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "too_many_stop_sequences", "stop", ()),
    ({"stop": [""]}, 422, "invalid_value", "stop", ()),
    ({"n": 9}, 422, "too_many_choices", "n", ()),
    ({"presence_penalty": 0.5}, 422, "unsupported_parameter", "presence_penalty", ()),
    ({"steer": [{"vector": "up"}]}, 422, "unknown_parameter", "steer", ()),
    ({"model": "gpt-4o"}, 404, "model_not_found", "model", ("gpt-4o", MODEL_NAME)),
    ({"messages": []}, 422, "invalid_value", "messages", ()),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "invalid_value", "messages[0].role", ()),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, 400, "context_length_exceeded", "messages", ("512",)),
    (
        {"messages": [{"role": "user", "content": "word " * 155}], "max_tokens": 60},
        400,
        "context_length_exceeded",
        "messages",
        ("485", "60"),
    ),
]


@pytest.mark.parametrize(("changes", "status", "code", "param", "words"), BAD_BODIES, ids=[f"{c}-{p}" for _, _, c, p, _ in BAD_BODIES])
def test_bad_chat_bodies(server, changes, status, code, param, words) -> None:
    body = {k: v for k, v in _chat_body(**changes).items() if v is not None}
    error = assert_error(post(server.url, "/v1/chat/completions", body), status, code, param)
    for word in words:
        assert word in error["message"], error["message"]


def test_prompt_that_fits_gets_max_tokens_capped_to_the_room_left(client: OpenAI) -> None:
    out = chat(client, "word " * 155, max_tokens=None)  # 485 prompt tokens of 512: 27 left
    assert out.usage.prompt_tokens == 485
    assert out.usage.completion_tokens <= 27
    assert (out.choices[0].finish_reason == "length") == (out.usage.completion_tokens == 27)


def test_missing_model_and_prompt_name_the_field(server) -> None:
    body = _chat_body()
    del body["model"]
    assert_error(post(server.url, "/v1/chat/completions", body), 422, "missing_required_parameter", "model")
    assert_error(post(server.url, "/v1/completions", {"model": MODEL_NAME}), 422, "missing_required_parameter", "prompt")
    assert_error(post(server.url, "/v1/completions", {"model": MODEL_NAME, "prompt": []}), 422, "invalid_value", "prompt")
    assert_error(post(server.url, "/v1/completions", {"model": MODEL_NAME, "prompt": ""}), 400, "empty_prompt", "prompt")
    assert_error(
        post(server.url, "/v1/completions", {"model": MODEL_NAME, "prompt": ["hi", "word " * 600]}),
        400,
        "context_length_exceeded",
        "prompt[1]",
    )


@pytest.mark.parametrize("raw", [b'{"model": "tiny-llama", "messages": [', b"", b"\xff\xfe", b"not json"])
def test_malformed_json_is_400(server, raw: bytes) -> None:
    assert_error(post(server.url, "/v1/chat/completions", content=raw), 400, "invalid_json")


def test_json_that_is_not_an_object_is_400(server) -> None:
    error = assert_error(post(server.url, "/v1/completions", [1, 2]), 400, "invalid_json")
    assert "object" in error["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_coef_is_422(server, value: str) -> None:
    raw = (
        f'{{"model": "tiny-llama", "messages": [{{"role": "user", "content": "hi"}}], "steering": [{{"vector": "up", "coef": {value}}}]}}'
    ).encode()
    error = assert_error(post(server.url, "/v1/chat/completions", content=raw), 422, "invalid_value", "steering[0].coef")
    assert "finite" in error["message"]


def test_body_too_large_is_413(server) -> None:
    big = _chat_body(messages=[{"role": "user", "content": "x" * 25_000}])
    assert_error(post(server.url, "/v1/chat/completions", big), 413, "request_too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    with httpx.Client(timeout=30) as http:
        response = http.post(server.url + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")


def test_openai_client_raises_typed_errors(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        chat(client, "hi", [{"vector": "missing", "coef": 1.0}])
    assert not_found.value.code == "vector_not_found" and not_found.value.param == "steering[0].vector"
    with pytest.raises(openai.UnprocessableEntityError) as bad_coef:
        chat(client, "hi", [{"vector": "up", "coef": 99.0}])
    assert bad_coef.value.param == "steering[0].coef"
    with pytest.raises(openai.BadRequestError) as too_long:
        chat(client, "word " * 600)
    assert too_long.value.code == "context_length_exceeded"


def test_unknown_route_and_method_use_openai_bodies(server) -> None:
    with httpx.Client(timeout=30) as http:
        assert_error(http.get(server.url + "/v1/nothing"), 404, "not_found")
        response = http.get(server.url + "/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]["message"]


def test_chat_needs_a_chat_template(vecs) -> None:
    """A base model (no chat template) refuses chat completions but serves text completions."""
    model, tok = make_tiny("llama", chat_template=False)
    config = ServerConfig(model_name=MODEL_NAME)
    ctx = ServingContext(config, VectorStore(vecs, model), Codec(tok, [2]), 512, 3)
    with pytest.raises(APIError) as err:
        prepare_chat(ChatCompletionRequest.model_validate(_chat_body()), ctx)
    assert (err.value.status, err.value.code) == (400, "no_chat_template")
    prepared = prepare_completion(CompletionRequest.model_validate({"model": MODEL_NAME, "prompt": "Hello"}), ctx)
    assert prepared.requests[0].max_tokens == config.default_max_tokens


def test_coef_follows_the_librarys_policy_beyond_max_coef(tmp_path) -> None:
    """vectors.check_coef decides: |coef| <= max_coef is not enough when coef * norm would overflow."""
    from server_helpers import tiny_vector

    tiny_vector(1, [1], norm=5e4).save(tmp_path / "huge.safetensors")
    model, tok = make_tiny("llama")
    ctx = ServingContext(ServerConfig(model_name=MODEL_NAME, max_coef=50.0), VectorStore(tmp_path, model), Codec(tok, [2]), 512, 3)

    def body(coef: float) -> CompletionRequest:
        return CompletionRequest.model_validate({"model": MODEL_NAME, "prompt": "Hello", "steering": [{"vector": "huge", "coef": coef}]})

    assert prepare_completion(body(1.0), ctx).requests
    with pytest.raises(APIError) as err:
        prepare_completion(body(5.0), ctx)  # 5 <= max_coef, but 5 * 5e4 > MAX_DELTA_NORM
    assert (err.value.status, err.value.code, err.value.param) == (422, "coef_out_of_range", "steering[0].coef")
    assert "steering[0].coef=5.0 is out of range for a vector of norm 5e+04" in str(err.value)


# ----------------------------------------------------------------------------- limits and keys


def test_full_queue_and_too_many_concurrent_requests_get_503_with_retry_after(vecs) -> None:
    server = start_server(vecs, max_batch_size=1, max_queue=1, max_concurrent_requests=5, retry_after_s=7)
    try:
        engine = server.app.state.serving.engine
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 3, "temperature": 0}
        with ThreadPoolExecutor(2) as pool, engine.paused():
            held = [pool.submit(post, server.url, "/v1/completions", body) for _ in range(2)]  # 1 row + 1 queued
            wait_until(lambda: engine.load == (0, 2), "two queued requests")
            busy = post(server.url, "/v1/completions", body)
            assert_error(busy, 503, "server_busy")
            assert busy.headers["retry-after"] == "7"
            assert "max_queue=1" in busy.json()["error"]["message"]
        assert [f.result(timeout=60).status_code for f in held] == [200, 200]
    finally:
        server.stop()

    server = start_server(vecs, max_concurrent_requests=2)
    try:
        engine = server.app.state.serving.engine
        body = {"model": MODEL_NAME, "prompt": ["Hello", "Hi"], "max_tokens": 3, "temperature": 0}
        with ThreadPoolExecutor(1) as pool, engine.paused():
            held = pool.submit(post, server.url, "/v1/completions", body)
            wait_until(lambda: engine.load == (0, 2), "two queued requests")
            busy = post(server.url, "/v1/completions", {**body, "prompt": "x"})
            assert_error(busy, 503, "server_busy")
            assert "max_concurrent_requests=2" in busy.json()["error"]["message"] and busy.headers["retry-after"] == "1"
        assert held.result(timeout=60).status_code == 200
        assert post(server.url, "/v1/completions", body).status_code == 200  # slots are given back
    finally:
        server.stop()


@pytest.mark.parametrize("from_env", [False, True])
def test_api_key_guards_everything_but_health(vecs, reference, monkeypatch: pytest.MonkeyPatch, from_env: bool) -> None:
    if from_env:
        monkeypatch.setenv(API_KEY_ENV, "sk-test-123")
    server = start_server(vecs, api_key=None if from_env else "sk-test-123")
    try:
        with httpx.Client(timeout=30) as http:
            assert http.get(server.url + "/health").status_code == 200
            for path in ("/v1/models", "/v1/vectors", "/metrics"):
                assert_error(http.get(server.url + path), 401, "missing_api_key")
                assert_error(http.get(server.url + path, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
                assert http.get(server.url + path, headers={"Authorization": "Bearer sk-test-123"}).status_code == 200
            response = http.post(server.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "hi"})
            assert_error(response, 401, "missing_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            chat(wrong, "hi")
        right = OpenAI(base_url=f"{server.url}/v1", api_key="sk-test-123", max_retries=0)
        steered = chat(right, "hi", [{"vector": "up", "coef": 4.0}]).choices[0].message.content
        model, tok = reference
        assert steered == st.generate(model, tok, "hi", st.SteeringVector.load(vecs / "up.safetensors"), 4.0, max_new_tokens=16)
    finally:
        server.stop()


def test_no_key_configured_means_open(client: OpenAI) -> None:
    anyone = OpenAI(base_url=str(client.base_url), api_key="whatever", max_retries=0)
    assert [m.id for m in anyone.models.list().data] == [MODEL_NAME]


# ----------------------------------------------------------------------------- isolation


def test_bad_requests_do_not_disturb_requests_in_flight(server, client: OpenAI) -> None:
    jobs = [
        (PROMPTS[0], None),
        (PROMPTS[1], [{"vector": "up", "coef": 1.5}]),
        (PROMPTS[2], [{"vector": "side", "coef": -2.0, "apply_to": "generated"}]),
        (PROMPTS[3], [{"vector": "pre", "coef": 1.0}]),
    ]
    solo = [chat(client, p, s, max_tokens=40).choices[0].message.content for p, s in jobs]
    engine = server.app.state.serving.engine
    with ThreadPoolExecutor(len(jobs)) as pool:
        with engine.paused():
            futures = [pool.submit(chat, client, p, s, max_tokens=40) for p, s in jobs]
            wait_until(lambda: engine.load[1] == len(jobs), "the jobs to queue")
        wait_until(lambda: engine.load == (len(jobs), 0), "the jobs to be admitted")  # admitted: prefilled and decoding
        with engine.paused():  # hold the batch mid-flight while the bad requests come in
            assert engine.load == (len(jobs), 0)
            for changes, status, code, param, _ in BAD_BODIES:
                body = {k: v for k, v in _chat_body(**changes).items() if v is not None}
                assert_error(post(server.url, "/v1/chat/completions", body), status, code, param)
            assert_error(post(server.url, "/v1/chat/completions", content=b"{oops"), 400, "invalid_json")
            assert engine.load == (len(jobs), 0)
        results = [f.result(timeout=120).choices[0].message.content for f in futures]
    assert results == solo


def test_a_failing_prefill_fails_only_that_request(vecs) -> None:
    """An engine-side failure answers 500 (or an error event) to its own request; the batch goes on."""
    server = start_server(vecs)
    try:
        engine = server.app.state.serving.engine
        forward = engine.model.forward

        def fragile(*args: Any, **kwargs: Any) -> Any:
            if kwargs["input_ids"].shape[1] > 60:  # only the long prompt's prefill
                raise RuntimeError("boom")
            return forward(*args, **kwargs)

        engine.model.forward = fragile
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        alone = chat(client, PROMPTS[0], [{"vector": "up", "coef": 1.0}], max_tokens=20).choices[0].message.content
        with ThreadPoolExecutor(2) as pool:
            with engine.paused():
                good = pool.submit(chat, client, PROMPTS[0], [{"vector": "up", "coef": 1.0}], max_tokens=20)
                bad = pool.submit(chat, client, "word " * 30)
                wait_until(lambda: engine.load[1] == 2, "both requests to queue")
            with pytest.raises(openai.InternalServerError) as failed:
                bad.result(timeout=60)
            assert good.result(timeout=60).choices[0].message.content == alone
        assert failed.value.code == "generation_failed" and "boom" in failed.value.message
        with pytest.raises(openai.APIError, match="boom"):
            list(chat(client, "word " * 30, stream=True))
        # The client has the error event before the server closes the stream and frees its slot.
        wait_until(lambda: engine.load == (0, 0) and server.app.state.serving.in_progress == 0, "the failed stream's slot to be freed")
    finally:
        server.stop()
