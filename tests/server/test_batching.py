"""Exactness of continuous batching: a request in a mixed batch gives the tokens it gives alone.

Over HTTP (the real ``openai`` client) with eight steering settings in one
batch, including none, an ablation and the one-vector modes (clamp, angular, affine); and on the engine directly, for every tiny
architecture, with rows joining while others are mid-decode and leaving at
different times (so padding, trimming and per-row positions all change).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import PROMPTS, chat, wait_until
from tiny_models import ARCHS, make_tiny

import steering as st
from steering.server import Codec, Engine, GenerationRequest, SamplingParams, Term, build_row_deltas
from steering.server.engine import Event, Finished, TextDelta

SETTINGS: list[tuple[str, list[dict] | None, dict]] = [
    ("none", None, {}),
    ("up+", [{"vector": "up", "coef": 1.5}], {"max_tokens": 20}),
    ("up- generated", [{"vector": "up", "coef": -2.0, "apply_to": "generated"}], {"max_tokens": 9}),
    ("side+pre prompt", [{"vector": "side", "coef": 2.5, "apply_to": "prompt"}, {"vector": "pre", "coef": -1.0}], {"max_tokens": 14}),
    ("up layer 2, sampled", [{"vector": "up", "coef": 1.0, "layers": [2]}], {"temperature": 0.9, "seed": 11, "max_tokens": 18}),
    ("ablate up, side+", [{"vector": "up", "mode": "ablate"}, {"vector": "side", "coef": 2.0}], {"max_tokens": 16}),
    ("clamp up, side+", [{"vector": "up", "mode": "clamp", "coef": 2.0}, {"vector": "side", "coef": 2.0}], {"max_tokens": 15}),
    (
        "angular up[1] generated, affine_add up[2]",
        [
            {"vector": "up", "mode": "angular", "coef": -10.0, "layers": [1], "apply_to": "generated"},
            {"vector": "up", "mode": "affine_add", "coef": 1.0, "layers": [2]},
        ],
        {"max_tokens": 13},
    ),
]


def _batch_sizes(server) -> dict[float, float]:
    text = server.app.state.serving.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "steering_batch_size":
            return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    raise AssertionError("no steering_batch_size metric")


def test_mixed_batch_over_http_equals_solo_runs(server, client: OpenAI) -> None:
    jobs = [(PROMPTS[i % len(PROMPTS)] * (1 + i % 2), steering, kwargs) for i, (_, steering, kwargs) in enumerate(SETTINGS)]
    solo = [chat(client, prompt, steering, **kwargs) for prompt, steering, kwargs in jobs]
    assert len({s.choices[0].message.content for s in solo}) == len(solo), "settings should give distinct answers"

    engine = server.app.state.serving.engine
    before = _batch_sizes(server)
    with ThreadPoolExecutor(len(jobs)) as pool:
        with engine.paused():  # line the requests up, then admit them in one turn
            futures = [pool.submit(chat, client, prompt, steering, **kwargs) for prompt, steering, kwargs in jobs]
            wait_until(lambda: engine.load[1] == len(jobs), "all requests to queue")
        batched = [f.result(timeout=120) for f in futures]

    def full_passes(buckets: dict[float, float]) -> float:  # decode passes that held every row
        return buckets[float("inf")] - buckets[max(le for le in buckets if le < len(jobs))]

    assert full_passes(_batch_sizes(server)) > full_passes(before), "the requests were not decoded in one batch"
    for (name, _, _), alone, together in zip(SETTINGS, solo, batched, strict=True):
        assert together.choices[0].message.content == alone.choices[0].message.content, name
        assert together.usage.model_dump() == alone.usage.model_dump(), name


# ----------------------------------------------------------------------------- engine level


def _vector(seed: int, layers: list[int], width: int, site: str = "block_output", norm: float = 4.0) -> st.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    directions = {i: (d := torch.randn(width, generator=g)) / d.norm() * norm for i in layers}
    reference = {i: torch.randn(width, generator=g) for i in layers}  # for the affine modes
    return st.SteeringVector(directions, hidden_size=width, num_layers=3, site=site, reference=reference)


def _requests(tok, width: int) -> list[GenerationRequest]:
    up, side, pre = _vector(1, [0, 2], width), _vector(2, [1], width), _vector(3, [1], width, site="block_input")
    both = _vector(4, [0, 1], width)
    prompts = [
        "The quick brown fox",
        "Hello",
        "I love sunny days at the beach, but I hate the cold and rainy winter mornings. She walked",  # > sliding window
        "What is the capital of France?",
        "Once upon a time, there was a little girl",
        "My favourite food is",
        "Tabs and spaces",
    ]
    settings = [
        [],
        [Term(up, 1.5, (0, 2))],
        [Term(side, -2.0, (1,), "generated"), Term(up, 0.5, (2,), "prompt")],
        [Term(pre, 2.0, (1,))],
        [Term(up, -1.0, (0,), "all"), Term(side, 1.0, (1,), "generated")],
        [Term(up, 1.0, (0, 2), mode="ablate")],  # rank 1 at layer 0 ...
        [Term(up, 1.0, (0,), mode="ablate"), Term(both, 1.0, (0, 1), "generated", "ablate"), Term(side, 2.0, (1,))],  # ... rank 2
        [Term(up, 2.0, (0, 2), mode="clamp"), Term(side, 1.5, (1,), "generated", "angular"), Term(both, -1.0, (0,))],
        [Term(both, 30.0, (0, 1), "prompt", "angular"), Term(up, 1.0, (2,), mode="affine_add"), Term(side, 1.0, (1,), mode="ablate")],
        [Term(up, 1.0, (0, 2), "generated", "affine_ablate"), Term(pre, -2.0, (1,), mode="clamp")],
    ]
    prompts += ["Rain again today", "Seven plus five is", "The museum opens at"]
    lengths = [40, 17, 30, 11, 21, 15, 19, 16, 22, 13]
    sampling = [SamplingParams(0.0)] * 4 + [SamplingParams(0.8, 0.9, seed=5)] + [SamplingParams(0.0)] * 5
    return [
        GenerationRequest(tuple(tok(p)["input_ids"]), n, s, (), build_row_deltas(t))
        for p, t, n, s in zip(prompts, settings, lengths, sampling, strict=True)
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_rows_joining_mid_decode_equal_solo_runs(arch: str) -> None:
    model, tok = make_tiny(arch)
    engine = Engine(model, Codec(tok, []), max_batch_size=16).start()  # no EOS: every row runs to its length
    try:
        requests = _requests(tok, model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
        solo = [engine.generate(r, timeout=120).token_ids for r in requests]

        results: dict[int, tuple[int, ...]] = {}
        done = threading.Event()
        later = list(range(2, len(requests)))  # these join while rows 0 and 1 are mid-decode

        def sink_for(index: int) -> Callable[[Event], None]:
            seen = [0]

            def sink(event: Event) -> None:
                if isinstance(event, TextDelta) or isinstance(event, Finished):
                    seen[0] += 1
                if index == 0 and later and seen[0] % 3 == 0:  # runs on the engine thread
                    nxt = later.pop(0)
                    engine.submit([requests[nxt]], [sink_for(nxt)])
                if isinstance(event, Finished):
                    results[index] = event.token_ids
                    if len(results) == len(requests):
                        done.set()

            return sink

        with engine.paused():
            engine.submit(requests[:2], [sink_for(0), sink_for(1)])
        assert done.wait(120), f"only {sorted(results)} finished"
        for i, alone in enumerate(solo):
            assert results[i] == alone, f"{arch}: request {i} differs in the batch"
        assert len(set(solo)) == len(solo)
    finally:
        engine.close()
