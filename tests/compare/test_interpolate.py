"""Interpolation between two vectors, and the built-in scorers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steering as st
from steering import compare as sc
from steering.vectors import SteeringVector, model_fingerprint

PROMPTS = ["Tell me about the park.", "How was the film?"]


def random_vector(model, seed: int, layers=(1, 2)) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {i: torch.randn(32, generator=g) for i in layers}, hidden_size=32, num_layers=3, model_fingerprint=model_fingerprint(model)
    )


def test_interpolation_steers_with_the_mixed_vector(llama) -> None:
    model, tok = llama
    a, b = random_vector(model, 0), random_vector(model, 1, layers=(2,))
    seen: list[list[str]] = []

    def length(texts: list[str]) -> list[float]:
        seen.append(texts)
        return [float(len(t)) for t in texts]

    res = sc.interpolate(model, tok, a, b, PROMPTS, {"length": length}, ts=[0.0, 0.5, 1.0], coef=3.0, max_new_tokens=5)
    assert res["ts"] == [0.0, 0.5, 1.0] and res["coef"] == 3.0
    expected = [
        st.generate(model, tok, PROMPTS, a, 3.0, max_new_tokens=5),
        st.generate(model, tok, PROMPTS, 0.5 * a + 0.5 * b, 3.0, max_new_tokens=5),
        st.generate(model, tok, PROMPTS, b, 3.0, max_new_tokens=5),
    ]
    assert res["texts"] == expected == seen
    assert res["texts"][0] != res["texts"][2]  # the endpoints really steer differently
    for k, texts in enumerate(expected):
        lengths = [len(t) for t in texts]
        assert res["scores"]["length"][k] == pytest.approx(np.mean(lengths))
        assert res["stds"]["length"][k] == pytest.approx(np.std(lengths))
        assert res["per_text"]["length"][k] == lengths
    assert res["layers"] == [1, 2]

    one = sc.interpolate(model, tok, a, b, PROMPTS, {"length": length}, ts=[0.5], coef=3.0, layers=[2], max_new_tokens=5)
    assert one["layers"] == [2]
    assert one["texts"] == [st.generate(model, tok, PROMPTS, (0.5 * a + 0.5 * b).select([2]), 3.0, max_new_tokens=5)]
    assert one["texts"] != [expected[1]]  # layer 1 no longer steered
    with pytest.raises(st.SteeringError, match=r"interpolation layers \[0\] are in neither vector"):
        sc.interpolate(model, tok, a, b, PROMPTS, {"length": length}, layers=[0])


def test_projection_scorer_projects_mean_activation(llama) -> None:
    model, tok = llama
    vec = random_vector(model, 3)
    texts = ["a happy cat", "the gloomy rain falls"]
    scores = sc.projection_scorer(model, tok, vec, 1)(texts)
    feats = sc.text_features(model, tok, texts, [1], read="mean")
    d = vec.directions[1].numpy().astype(np.float64)
    np.testing.assert_allclose(scores, feats[1] @ d / np.linalg.norm(d), rtol=1e-6)
    assert np.isnan(sc.projection_scorer(model, tok, vec, 1)(["", "x"])[0])
    with pytest.raises(st.SteeringError, match=r"has no layer 0 \(it has \[1, 2\]\)"):
        sc.projection_scorer(model, tok, vec, 0)


def test_sentiment_scorer_orders_texts() -> None:
    pytest.importorskip("vaderSentiment")
    scores = sc.sentiment_scorer()(["What a wonderful, happy day!", "This is awful and sad.", "The table is brown."])
    assert scores[0] > scores[2] > scores[1]


def test_interpolation_errors(llama) -> None:
    model, tok = llama
    a = random_vector(model, 0)
    other = SteeringVector({1: torch.randn(32)}, hidden_size=32, num_layers=3, model="qwen", model_fingerprint="fp2:" + "0" * 16)
    with pytest.raises(sc.CrossModelError):
        sc.interpolate(model, tok, a, other, PROMPTS, {"n": lambda t: [0.0] * len(t)})
    with pytest.raises(st.SteeringError, match="returned shape"):
        sc.interpolate(model, tok, a, a, PROMPTS, {"bad": lambda t: [0.0]}, ts=[0.0], max_new_tokens=2)
    with pytest.raises(st.SteeringError, match="at least one prompt"):
        sc.interpolate(model, tok, a, a, [], {"n": lambda t: [0.0] * len(t)})


def test_sampled_interpolation_is_seeded_locally(llama) -> None:
    """seed= makes sampling reproducible without reseeding the caller's global torch RNG."""
    model, tok = llama
    a, b = random_vector(model, 0), random_vector(model, 1)

    def run(seed):
        return sc.interpolate(
            model, tok, a, b, PROMPTS, {"n": lambda t: [0.0] * len(t)}, ts=[0.0, 1.0], max_new_tokens=6, do_sample=True, seed=seed
        )["texts"]

    torch.manual_seed(999)
    first = run(0)
    after_first = torch.rand(4)
    torch.manual_seed(12345)  # another global state: the same texts
    assert run(0) == first
    after_second = torch.rand(4)
    assert not torch.equal(after_first, after_second)  # the caller's stream was not reset to seed=0
    assert run(1) != first  # the seed does act
