"""Chat and text completions through the real ``openai`` client: steering, sampling, usage, streaming."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI
from server_helpers import MODEL_NAME, PROMPTS, chat, post, sse_json, wait_until

import steering as st
from steering.server.text import Codec


def _reference(reference, vecs, prompt, name=None, coef=0.0, *, layers=None, positions="all", max_new_tokens=16) -> str:
    """The library's own greedy steered generation (HF generate + st.steer) of one chat prompt."""
    model, tok = reference
    vector = None
    if name is not None:
        vector = st.SteeringVector.load(vecs / f"{name}.safetensors")
        vector = vector.select(layers) if layers else vector
    return st.generate(model, tok, prompt, vector, coef, max_new_tokens=max_new_tokens, apply_to=positions)


def test_unsteered_chat_matches_library_generate(client: OpenAI, reference, vecs) -> None:
    out = chat(client, PROMPTS[0])
    assert out.object == "chat.completion" and out.model == MODEL_NAME
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == _reference(reference, vecs, PROMPTS[0])
    assert choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("coef", [4.0, -4.0])
def test_steered_chat_changes_the_completion_and_matches_st_steer(client: OpenAI, reference, vecs, coef: float) -> None:
    plain = chat(client, PROMPTS[1]).choices[0].message.content
    steered = chat(client, PROMPTS[1], [{"vector": "up", "coef": coef}]).choices[0].message.content
    assert steered != plain
    assert steered == _reference(reference, vecs, PROMPTS[1], "up", coef)


def test_plus_and_minus_coef_differ_and_zero_coef_is_unsteered(client: OpenAI, reference, vecs) -> None:
    plus = chat(client, PROMPTS[2], [{"vector": "up", "coef": 4}]).choices[0].message.content
    minus = chat(client, PROMPTS[2], [{"vector": "up", "coef": -4}]).choices[0].message.content
    zero = chat(client, PROMPTS[2], [{"vector": "up", "coef": 0}]).choices[0].message.content
    assert plus != minus
    assert (plus, minus) == (_reference(reference, vecs, PROMPTS[2], "up", 4.0), _reference(reference, vecs, PROMPTS[2], "up", -4.0))
    assert zero == chat(client, PROMPTS[2]).choices[0].message.content


@pytest.mark.parametrize("positions", ["prompt", "generated"])
def test_positions_and_layer_subsets_match_the_library(client: OpenAI, reference, vecs, positions: str) -> None:
    term = {"vector": "up", "coef": 5.0, "layers": [2], "apply_to": positions}
    got = chat(client, PROMPTS[3], [term]).choices[0].message.content
    assert got == _reference(reference, vecs, PROMPTS[3], "up", 5.0, layers=[2], positions=positions)
    assert got != chat(client, PROMPTS[3], [{**term, "apply_to": "all"}]).choices[0].message.content
    old = {k: v for k, v in term.items() if k != "apply_to"} | {"positions": positions}  # the field's name before issue 11
    assert chat(client, PROMPTS[3], [old]).choices[0].message.content == got


def test_several_terms_and_sites_add_up(client: OpenAI, reference, vecs) -> None:
    """Two block_output vectors in one request equal their sum applied by the library."""
    terms = [{"vector": "up", "coef": 2.0}, {"vector": "side", "coef": -3.0}]
    got = chat(client, PROMPTS[0], terms).choices[0].message.content
    model, tok = reference
    up = st.SteeringVector.load(vecs / "up.safetensors")
    side = st.SteeringVector.load(vecs / "side.safetensors")
    assert got == st.generate(model, tok, PROMPTS[0], [(up, 2.0), (side, -3.0)], max_new_tokens=16)
    # a block_input vector goes through its own hook site
    pre = chat(client, PROMPTS[0], [{"vector": "pre", "coef": 4.0}]).choices[0].message.content
    assert pre == _reference(reference, vecs, PROMPTS[0], "pre", 4.0)


def test_ablate_projects_directions_out_like_st_steer(client: OpenAI, reference, vecs) -> None:
    """``mode: ablate`` equals the library's ablation, alone and before an added term."""
    model, tok = reference
    up = st.SteeringVector.load(vecs / "up.safetensors")
    side = st.SteeringVector.load(vecs / "side.safetensors")
    plain = chat(client, PROMPTS[1]).choices[0].message.content
    ablated = chat(client, PROMPTS[1], [{"vector": "up", "mode": "ablate"}, {"vector": "side", "mode": "ablate"}])
    ablated = ablated.choices[0].message.content
    assert ablated != plain
    assert ablated == st.generate(model, tok, PROMPTS[1], [(up, 1.0), (side, 1.0)], max_new_tokens=16, mode="ablate")

    both = chat(client, PROMPTS[1], [{"vector": "up", "coef": 3.0}, {"vector": "side", "mode": "ablate"}]).choices[0].message.content
    with st.steer(model, side, mode="ablate"), st.steer(model, up, coef=3.0, backend="hook"):  # ablate runs first
        assert both == st.generate(model, tok, PROMPTS[1], max_new_tokens=16)
    assert both not in (plain, ablated)
    # a vector that is zero at some layer can still be ablated where it is not
    hollow = chat(client, PROMPTS[1], [{"vector": "hollow", "mode": "ablate", "layers": [1]}]).choices[0].message.content
    hollow_vec = st.SteeringVector.load(vecs / "hollow.safetensors").select([1])
    assert hollow == st.generate(model, tok, PROMPTS[1], hollow_vec, 1.0, max_new_tokens=16, mode="ablate")
    assert hollow != plain


MODE_TERMS = [
    {"mode": "clamp", "coef": 2.0},
    {"mode": "clamp", "coef": -1.5, "apply_to": "generated"},
    {"mode": "angular", "coef": 10.0},
    {"mode": "angular", "coef": -10.0, "layers": [1], "apply_to": "prompt"},
    {"mode": "affine_add", "coef": 1.0},
    {"mode": "affine_ablate"},
]


@pytest.mark.parametrize("term", MODE_TERMS, ids=lambda t: "-".join(str(v) for v in t.values()))
def test_every_mode_matches_st_generate(client: OpenAI, reference, vecs, term: dict) -> None:
    """clamp, angular and the affine modes per request give st.generate(mode=...)'s tokens."""
    model, tok = reference
    up = st.SteeringVector.load(vecs / "up.safetensors")
    up = up.select(term["layers"]) if "layers" in term else up
    got = chat(client, PROMPTS[0], [{"vector": "up", **term}]).choices[0].message.content
    expected = st.generate(
        model, tok, PROMPTS[0], up, term.get("coef", 1.0), mode=term["mode"], apply_to=term.get("apply_to", "all"), max_new_tokens=16
    )
    assert got == expected
    assert got != chat(client, PROMPTS[0]).choices[0].message.content


def test_modes_combine_in_the_order_of_nested_steer(client: OpenAI, reference, vecs) -> None:
    """ablate, then a one-vector mode, then add at one layer: as st.steer(ablate) around st.steer(clamp) around st.steer(add)."""
    model, tok = reference
    up = st.SteeringVector.load(vecs / "up.safetensors")
    side = st.SteeringVector.load(vecs / "side.safetensors")
    # side is clamped and added at layer 1: clamp-then-add and add-then-clamp leave different projections (30 vs 12).
    terms = [{"vector": "side", "coef": 3.0}, {"vector": "side", "mode": "clamp", "coef": 2.0}, {"vector": "up", "mode": "ablate"}]
    got = chat(client, PROMPTS[2], terms).choices[0].message.content
    with st.steer(model, up, mode="ablate"), st.steer(model, side, 2.0, mode="clamp"), st.steer(model, side, 3.0, backend="hook"):
        assert got == st.generate(model, tok, PROMPTS[2], max_new_tokens=16)
    with st.steer(model, up, mode="ablate"), st.steer(model, side, 3.0, backend="hook"), st.steer(model, side, 2.0, mode="clamp"):
        assert got != st.generate(model, tok, PROMPTS[2], max_new_tokens=16)  # the other order is another result


def test_usage_counts_prompt_and_completion_tokens(client: OpenAI, reference) -> None:
    _, tok = reference
    out = chat(client, PROMPTS[4], max_tokens=7)
    prompt_ids = Codec(tok, []).encode_chat([{"role": "user", "content": PROMPTS[4]}])
    assert out.usage.prompt_tokens == len(prompt_ids)
    assert 1 <= out.usage.completion_tokens <= 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 7


def test_max_tokens_ends_with_length(client: OpenAI) -> None:
    out = client.completions.create(model=MODEL_NAME, prompt="The quick brown fox", max_tokens=5, temperature=0)
    # the tiny model may emit EOS early; without it the completion runs to max_tokens
    assert out.usage.completion_tokens <= 5
    assert (out.choices[0].finish_reason == "length") == (out.usage.completion_tokens == 5)


def test_text_completion_matches_library_without_chat_template(client: OpenAI, reference) -> None:
    model, tok = reference
    out = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=12, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].text == st.generate(model, tok, "Once upon a time", max_new_tokens=12, chat=False)


def test_completion_prompt_lists_and_n_give_one_choice_each(client: OpenAI) -> None:
    out = client.completions.create(model=MODEL_NAME, prompt=["Hello", "Why is the sky"], n=2, max_tokens=6, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text  # greedy: n copies agree
    single = client.completions.create(model=MODEL_NAME, prompt="Why is the sky", max_tokens=6, temperature=0)
    assert out.choices[2].text == single.choices[0].text
    assert (
        out.usage.completion_tokens
        == 2 * single.usage.completion_tokens
        + 2 * client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=6, temperature=0).usage.completion_tokens
    )


def test_stop_sequence_cuts_the_text(client: OpenAI) -> None:
    full = chat(client, PROMPTS[1], max_tokens=24).choices[0].message.content
    assert len(full) > 6, "the tiny model's greedy answer should be long enough to cut"
    stop = full[3:5]
    cut = chat(client, PROMPTS[1], max_tokens=24, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_seeds_differ(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        return chat(client, PROMPTS[0], temperature=1.5, top_p=0.95, seed=seed, max_tokens=20).choices[0].message.content

    first = sample(7)
    assert first == sample(7)
    assert len({first, sample(8), sample(9)}) > 1
    assert first != chat(client, PROMPTS[0], max_tokens=20).choices[0].message.content  # not greedy
    # n choices of a seeded request use seed, seed + 1, ...: reproducible and different
    both = chat(client, PROMPTS[0], temperature=1.5, top_p=0.95, seed=7, max_tokens=20, n=2)
    assert [c.message.content for c in both.choices] == [first, sample(8)]


def test_chat_stream_adds_up_to_the_full_answer(client: OpenAI) -> None:
    steering = [{"vector": "up", "coef": -4.0}]
    full = chat(client, PROMPTS[2], steering, max_tokens=20)
    chunks = list(chat(client, PROMPTS[2], steering, max_tokens=20, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()


def test_raw_stream_is_sse_ending_with_done(server) -> None:
    body = {"model": MODEL_NAME, "prompt": "Hello there", "max_tokens": 8, "temperature": 0, "stream": True}
    response = post(server.url, "/v1/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_json(response)  # asserts the last event is [DONE]
    assert all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    plain = post(server.url, "/v1/completions", {**body, "stream": False}).json()
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


def test_stream_with_stop_never_leaks_the_stop_text(client: OpenAI) -> None:
    full = chat(client, PROMPTS[3], max_tokens=24).choices[0].message.content
    stop = full[4:7]
    chunks = list(chat(client, PROMPTS[3], max_tokens=24, stop=stop, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full[: full.index(stop)]


def test_client_that_leaves_a_stream_frees_its_row(server, client: OpenAI) -> None:
    with httpx.Client(timeout=30) as http:
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 64, "temperature": 0, "stream": True}
        with http.stream("POST", server.url + "/v1/completions", json=body) as response:
            next(response.iter_lines())  # one event, then hang up
    state = server.app.state.serving
    wait_until(lambda: state.in_progress == 0 and state.engine.load == (0, 0), "the cancellation to free the row")


def test_negative_layers_count_from_the_models_end_as_in_the_library(client: OpenAI) -> None:
    """``layers: [-1]`` is the model's last layer, as in ``st.steer(layers=[-1])`` (hooks.normalize_layer)."""
    last = chat(client, PROMPTS[3], [{"vector": "up", "coef": 5.0, "layers": [2]}]).choices[0].message.content
    assert chat(client, PROMPTS[3], [{"vector": "up", "coef": 5.0, "layers": [-1]}]).choices[0].message.content == last


def test_steering_condition_gates_each_request_like_the_library(client: OpenAI, reference, vecs) -> None:
    """steering_condition: the request is steered only if its prompt meets it, as st.generate(condition=) decides."""
    from steering.conditions import Condition, prompt_means

    model, tok = reference
    side, up = st.SteeringVector.load(vecs / "side.safetensors"), st.SteeringVector.load(vecs / "up.safetensors")
    prompts = PROMPTS[:4]
    means = prompt_means(model, tok, prompts, [1])[1]
    scores = sorted(float(s) for s in (means @ side.directions[1].double()) / (means.norm(dim=1) * side.directions[1].norm()))
    cut = (scores[1] + scores[2]) / 2  # two prompts on each side
    condition = Condition(side, 1, cut)
    on = condition.holds(means).tolist()
    assert sum(on) == 2
    for prompt, holds in zip(prompts, on):
        body = {"steering": [{"vector": "up", "coef": 4.0}], "steering_condition": [{"vector": "side", "layer": 1, "threshold": cut}]}
        got = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0, extra_body=body
        )
        text = got.choices[0].message.content
        assert text == st.generate(model, tok, prompt, up, 4.0, max_new_tokens=16, condition=condition)
        assert text == (st.generate(model, tok, prompt, up, 4.0, max_new_tokens=16) if holds else _reference(reference, vecs, prompt))
