"""The read-only endpoints: /health, /v1/models, /v1/vectors, /metrics."""

from __future__ import annotations

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import MODEL_NAME, chat

import steering as st


def test_health_reports_model_and_load(server) -> None:
    body = httpx.get(server.url + "/health", timeout=30).json()
    assert body == {"status": "ok", "model": MODEL_NAME, "running": 0, "waiting": 0}


def test_models_lists_the_served_model(client: OpenAI) -> None:
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(MODEL_NAME, "model", "steering")]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_vectors_lists_layers_norms_and_metadata(server, vecs) -> None:
    body = httpx.get(server.url + "/v1/vectors", timeout=30).json()
    by_name = {v["id"]: v for v in body["data"]}
    assert sorted(by_name) == ["hollow", "pre", "side", "up"]
    up = st.SteeringVector.load(vecs / "up.safetensors")
    assert by_name["up"]["layers"] == [1, 2]
    assert by_name["up"]["norms"] == {str(i): round(n, 6) for i, n in up.norms().items()}
    assert by_name["up"]["site"] == "block_output" and by_name["pre"]["site"] == "block_input"
    assert by_name["up"]["metadata"]["purpose"] == "tests"
    assert by_name["up"]["metadata"]["model_fingerprint"] == up.model_fingerprint
    errors = {e["name"]: e["error"] for e in body["errors"]}
    assert sorted(errors) == ["broken", "wide"]
    assert "hidden size 64" in errors["wide"]
    assert str(vecs) not in " ".join(errors.values())  # no server paths leak


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_tokens_batches_and_latency(server, client: OpenAI) -> None:
    before = _samples(httpx.get(server.url + "/metrics", timeout=30).text)
    out = chat(client, "Tell me a story.", [{"vector": "up", "coef": 1.0}], max_tokens=6)
    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert grew("steering_prompt_tokens_total") == out.usage.prompt_tokens
    assert grew("steering_completion_tokens_total") == out.usage.completion_tokens
    assert grew("steering_steered_generations_total") == 1
    reason = out.choices[0].finish_reason
    assert grew("steering_generations_total", (("finish_reason", reason),)) == 1
    assert grew("steering_request_latency_seconds_count") == 1
    assert grew("steering_time_to_first_token_seconds_count") == 1
    assert grew("steering_batch_size_count") == out.usage.completion_tokens - 1  # the first token comes from the prefill
    assert grew("steering_http_requests_total", (("route", "/v1/chat/completions"), ("status", "200"))) == 1
    assert ("steering_queue_waiting", ()) in after and ("steering_batch_running", ()) in after
