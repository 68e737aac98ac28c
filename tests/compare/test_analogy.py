"""Linear analogies: a - b + c nearest to d, by cosine of unit vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steering as st
from steering import compare as sc
from steering.vectors import SteeringVector

D = 24


def make(directions: dict[int, np.ndarray]) -> SteeringVector:
    return SteeringVector({i: torch.tensor(a, dtype=torch.float32) for i, a in directions.items()}, hidden_size=D, num_layers=4)


@pytest.fixture
def family() -> dict[str, SteeringVector]:
    """Behaviour = style + mood, on orthogonal axes; vectors of different norms."""
    axes = np.eye(D)
    formal, casual, happy, sad = axes[0], axes[1], axes[2], axes[3]
    noise = np.random.default_rng(0).normal(scale=0.05, size=(6, D))
    return {
        "formal_happy": make({1: 3 * (formal + happy) + noise[0], 2: formal + happy}),
        "formal_sad": make({1: 0.5 * (formal + sad) + noise[1], 2: formal + sad}),
        "casual_sad": make({1: 2 * (casual + sad) + noise[2], 2: casual + sad}),
        "casual_happy": make({1: casual + happy + noise[3], 2: casual + happy}),
        "unrelated": make({1: axes[7] + noise[4], 2: axes[8]}),
        "only_layer_2": make({2: casual + happy + axes[9]}),
    }


def test_analogy_finds_the_fourth_vector(family) -> None:
    ranking = sc.analogy(family, "formal_happy", "formal_sad", "casual_sad", layer=1)
    names = [n for n, _ in ranking]
    assert names[0] == "casual_happy" and ranking[0][1] > 0.9
    assert set(names) == {"casual_happy", "unrelated"}  # inputs excluded, layer-2-only vector absent
    exact = sc.analogy(family, "formal_happy", "formal_sad", "casual_sad", layer=2)
    assert exact[0] == ("casual_happy", pytest.approx(1.0, abs=1e-9))
    # The cosine is computed on unit vectors: rescaling an input changes nothing.
    scaled = {**family, "formal_happy": 100 * family["formal_happy"]}
    rescaled = sc.analogy(scaled, "formal_happy", "formal_sad", "casual_sad", layer=1)
    assert [n for n, _ in rescaled] == names
    np.testing.assert_allclose([c for _, c in rescaled], [c for _, c in ranking], atol=1e-6)
    with_inputs = sc.analogy(family, "formal_happy", "formal_sad", "casual_sad", layer=2, exclude_inputs=False)
    assert len(with_inputs) == 6


def test_analogy_check_rows(family) -> None:
    rows = sc.analogy_check(
        family,
        [("formal_happy", "formal_sad", "casual_sad", "casual_happy"), ("formal_happy", "formal_sad", "casual_sad", "unrelated")],
        layers=[1, 2, 3],
    )
    assert [(r["layer"], r["expected"], r["hit"], r["expected_rank"]) for r in rows] == [
        (1, "casual_happy", True, 1),
        (2, "casual_happy", True, 1),
        (1, "unrelated", False, 2),
        (2, "unrelated", False, 3),
    ]
    assert rows[0]["query"] == "formal_happy - formal_sad + casual_sad" and rows[0]["nearest"] == "casual_happy"
    assert rows[2]["expected_cosine"] < rows[2]["nearest_cosine"]


def test_analogy_errors(family) -> None:
    with pytest.raises(st.SteeringError, match="'nope', which is not among the vectors"):
        sc.analogy_check(family, [("formal_happy", "formal_sad", "nope", "casual_happy")], layers=[1])
    with pytest.raises(st.SteeringError, match="four names"):
        sc.analogy_check(family, [("formal_happy", "formal_sad", "casual_sad")], layers=[1])
    with pytest.raises(st.SteeringError, match="expected vector 'casual_sad' is also an input"):
        sc.analogy_check(family, [("formal_happy", "formal_sad", "casual_sad", "casual_sad")], layers=[1])
    with pytest.raises(st.SteeringError, match=r"'formal_happy' has no layer 3 \(it has \[1, 2\]\)"):
        sc.analogy(family, "formal_happy", "formal_sad", "casual_sad", layer=3)
