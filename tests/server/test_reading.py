"""``POST /v1/steering/read``: its numbers against an independent computation, and its errors.

The reference is written with plain ``register_forward_hook`` calls on a
second tiny Llama (same weights), not with the library's `record`/`steer`, and
runs prompt and completion as one forward pass without a cache, where the
endpoint runs two passes on a cache: the two routes must agree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from server_helpers import MODEL_NAME, post, start_server
from transformers import DynamicCache

import steering as st
from steering.hooks.cache import cache_kwargs
from steering.server import Codec, Engine
from steering.server.engine import EngineClosed

PROMPT = "Tell me about your day."
COMPLETION = " It was a long and sunny one."


def _read(server, **body: object) -> dict:
    response = post(server.url, "/v1/steering/read", {"model": MODEL_NAME, **body})
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def _hooked(model, add: dict[int, tuple[torch.Tensor, int]], read: int, out: list[torch.Tensor]) -> Iterator[None]:
    """Raw torch hooks: add ``delta`` from position ``start`` on at each layer in ``add``; keep layer ``read``'s output."""
    layers = model.model.layers
    handles = []

    def adder(delta: torch.Tensor, start: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, start:] += delta
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def reader(module, args, output):
        out.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    try:
        for layer, (delta, start) in add.items():
            handles.append(layers[layer].register_forward_hook(adder(delta, start)))
        handles.append(layers[read].register_forward_hook(reader))  # after the adders: reads the steered output
        yield
    finally:
        for handle in handles:
            handle.remove()


def _reference(
    reference, ids: list[int], direction: torch.Tensor, layer: int, add: dict[int, tuple[torch.Tensor, int]] | None = None
) -> list[float]:
    model, _ = reference
    seen: list[torch.Tensor] = []
    with torch.no_grad(), _hooked(model, add or {}, layer, seen):
        model(input_ids=torch.tensor([ids]), use_cache=False)
    unit = direction.float() / direction.float().norm()
    return (seen[0][0].float() @ unit).tolist()


def _chat_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("layer", [1, 2])
def test_unsteered_reading_equals_hidden_state_dot_unit_direction(server, reference, vecs, layer: int) -> None:
    up = st.SteeringVector.load(vecs / "up.safetensors")
    _, tok = reference
    got = _read(server, vector="up", layer=layer, messages=[{"role": "user", "content": PROMPT}], completion=COMPLETION)
    prompt_ids = _chat_ids(tok, PROMPT)
    completion_ids = tok(COMPLETION, add_special_tokens=False)["input_ids"]
    assert [t["id"] for t in got["tokens"]] == prompt_ids + completion_ids
    assert [t["part"] for t in got["tokens"]] == ["prompt"] * len(prompt_ids) + ["completion"] * len(completion_ids)
    assert (got["prompt_tokens"], got["completion_tokens"], got["layer"], got["site"]) == (
        len(prompt_ids),
        len(completion_ids),
        layer,
        "block_output",
    )
    assert "".join(t["text"] for t in got["tokens"][len(prompt_ids) :]) == tok.decode(completion_ids)
    expected = _reference(reference, prompt_ids + completion_ids, up.directions[layer], layer)
    assert [t["projection"] for t in got["tokens"]] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert len({round(t["projection"], 3) for t in got["tokens"]}) > 3  # real per-token numbers, not a constant


@pytest.mark.parametrize("positions", ["all", "generated", "prompt"])
def test_steered_reading_applies_the_steering_like_generation(server, reference, vecs, positions: str) -> None:
    """Steering ``side`` (layer 1) while reading ``up`` at layers 1 and 2, at the positions asked."""
    up = st.SteeringVector.load(vecs / "up.safetensors")
    _, tok = reference
    side = st.SteeringVector.load(vecs / "side.safetensors")
    coef = 3.0
    term = {"vector": "side", "coef": coef, "positions": positions}
    ids = tok(PROMPT)["input_ids"]
    completion = tok(COMPLETION, add_special_tokens=False)["input_ids"]
    start = {"all": 0, "generated": len(ids), "prompt": 0}[positions]
    for layer in (1, 2):
        got = _read(server, vector="up", layer=layer, prompt=PROMPT, completion=COMPLETION, steering=[term])
        plain = _read(server, vector="up", layer=layer, prompt=PROMPT, completion=COMPLETION)
        numbers = [t["projection"] for t in got["tokens"]]
        if positions == "prompt":
            # Steered prompt tokens only: the reference is the prompt pass alone, then the completion unsteered on top.
            expected = _prompt_only_reference(reference, ids, completion, up.directions[layer], layer, coef * side.directions[1])
        else:
            expected = _reference(reference, ids + completion, up.directions[layer], layer, {1: (coef * side.directions[1], start)})
        assert numbers == pytest.approx(expected, rel=1e-4, abs=1e-4)
        assert numbers != pytest.approx([t["projection"] for t in plain["tokens"]], abs=1e-3)
        if layer == 1 and positions != "prompt":  # at the steered layer itself: a shift of coef * (d . u)
            shift = coef * float(side.directions[1] @ (up.directions[1] / up.directions[1].norm()))
            moved = [n - p["projection"] for n, p in zip(numbers, plain["tokens"], strict=True)]
            assert moved[start:] == pytest.approx([shift] * len(moved[start:]), abs=1e-3)
            assert moved[:start] == pytest.approx([0.0] * start, abs=1e-5)


def _prompt_only_reference(reference, ids, completion, direction, layer, delta) -> list[float]:
    """positions="prompt": the prompt runs steered; completion tokens see the steered prompt's cache but are not steered."""
    model, _ = reference
    seen: list[torch.Tensor] = []
    unit = direction.float() / direction.float().norm()
    cache = DynamicCache()
    with torch.no_grad():
        with _hooked(model, {1: (delta, 0)}, layer, seen):
            model(input_ids=torch.tensor([ids]), use_cache=True, **cache_kwargs(model, cache))
        with _hooked(model, {}, layer, seen):
            model(input_ids=torch.tensor([completion]), use_cache=True, **cache_kwargs(model, cache))
    return (torch.cat([seen[0][0], seen[1][0]]).float() @ unit).tolist()


def test_reading_at_block_input_and_with_ablation(server, reference, vecs) -> None:
    """``pre`` lives at block_input of layer 2 = layer 1's output; ablating ``up`` removes its direction there."""
    _, tok = reference
    pre = st.SteeringVector.load(vecs / "pre.safetensors")
    ids = tok(PROMPT)["input_ids"]
    got = _read(server, vector="pre", layer=2, prompt=PROMPT)
    assert got["site"] == "block_input"
    assert [t["projection"] for t in got["tokens"]] == pytest.approx(_reference(reference, ids, pre.directions[2], 1), rel=1e-4, abs=1e-4)
    ablated = _read(server, vector="up", layer=1, prompt=PROMPT, steering=[{"vector": "up", "mode": "ablate"}])
    assert [t["projection"] for t in ablated["tokens"]] == pytest.approx([0.0] * len(ids), abs=1e-4)


def test_reading_under_clamp_and_affine_ablate_reads_the_value_they_set(server, reference, vecs) -> None:
    """At the clamped layer every token's projection is the target: coef * |v| (clamp), the reference mean's (affine_ablate)."""
    _, tok = reference
    up = st.SteeringVector.load(vecs / "up.safetensors")
    n = len(tok(PROMPT)["input_ids"]) + len(tok(COMPLETION, add_special_tokens=False)["input_ids"])
    unit = up.directions[1] / up.directions[1].norm()
    clamped = _read(
        server, vector="up", layer=1, prompt=PROMPT, completion=COMPLETION, steering=[{"vector": "up", "mode": "clamp", "coef": 2.0}]
    )
    assert [t["projection"] for t in clamped["tokens"]] == pytest.approx([2.0 * float(up.directions[1].norm())] * n, abs=1e-4)
    assert up.reference is not None
    affine = _read(server, vector="up", layer=1, prompt=PROMPT, completion=COMPLETION, steering=[{"vector": "up", "mode": "affine_ablate"}])
    assert [t["projection"] for t in affine["tokens"]] == pytest.approx([float(up.reference[1] @ unit)] * n, abs=1e-4)


def test_reading_errors_name_the_field(server) -> None:
    base = {"model": MODEL_NAME, "vector": "up", "layer": 1, "prompt": PROMPT}
    cases = [
        ({"vector": "nope"}, 404, "vector", "vector_not_found"),
        ({"vector": "../up"}, 422, "vector", "invalid_vector_name"),
        ({"vector": "broken"}, 422, "vector", "invalid_vector"),
        ({"layer": 0}, 422, "layer", "layer_not_in_vector"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 422, "prompt", "invalid_value"),
        ({"model": "other"}, 404, "model", "model_not_found"),
        ({"completion": "word " * 600}, 400, "completion", "context_length_exceeded"),
        ({"steering": [{"vector": "up", "coef": 99}]}, 422, "steering[0].coef", "coef_out_of_range"),
        ({"steering": [{"vector": "gone", "coef": 1}]}, 404, "steering[0].vector", "vector_not_found"),
        ({"layers": [1]}, 422, "layers", "unknown_parameter"),
    ]
    for change, status, param, code in cases:
        response = post(server.url, "/v1/steering/read", {**base, **change})
        assert (response.status_code, response.json()["error"]["param"], response.json()["error"]["code"]) == (status, param, code), change


def test_reading_needs_the_api_key(vecs) -> None:
    srv = start_server(vecs, api_key="sesame")
    try:
        body = {"model": MODEL_NAME, "vector": "up", "layer": 1, "prompt": PROMPT}
        assert post(srv.url, "/v1/steering/read", body).status_code == 401
        good = post(srv.url, "/v1/steering/read", body, headers={"Authorization": "Bearer sesame"})
        assert good.status_code == 200 and len(good.json()["tokens"]) > 0
    finally:
        srv.stop()


def test_engine_call_runs_fn_on_the_model_thread_and_reraises(server, reference) -> None:
    engine = server.app.state.serving.engine
    assert engine.call(lambda model: (threading.current_thread().name, model is engine.model), timeout=60) == ("steering-engine", True)
    with pytest.raises(ZeroDivisionError):
        engine.call(lambda model: 1 / 0, timeout=60)
    model, tok = reference
    closed = Engine(model, Codec(tok, [])).start()
    closed.close()
    with pytest.raises(EngineClosed):
        closed.call(lambda model: None)
