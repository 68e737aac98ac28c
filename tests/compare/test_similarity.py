"""Cosine matrices, layer x layer similarity, norms, and the cross-model refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from steering import compare as sc
from steering.vectors import SteeringVector, VectorMismatchError

D, L = 32, 6


def vec(seed: int, layers=range(L), fingerprint: str = "f" * 16, width: int = D, model: str = "m") -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector(
        {i: torch.randn(width, generator=g) for i in layers}, hidden_size=width, num_layers=L, model=model, model_fingerprint=fingerprint
    )


def numpy_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cosine_matrix_equals_numpy_on_safetensors_tensors(tmp_path: Path) -> None:
    """Acceptance: entries equal numpy's on the same safetensors tensors to 1e-6; diagonal 1; symmetric; -v gives -1."""
    names = ["a", "b", "c", "neg_a"]
    vectors = {"a": vec(0), "b": vec(1), "c": vec(2)}
    vectors["neg_a"] = -vectors["a"]
    files = {n: v.save(tmp_path / f"{n}.safetensors") for n, v in vectors.items()}
    loaded = {n: SteeringVector.load(p) for n, p in files.items()}
    raw = {n: load_file(str(p)) for n, p in files.items()}  # the tensors as numpy reads them
    for layer in range(L):
        m = sc.cosine_matrix(loaded, layer)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                assert abs(m[i, j] - numpy_cos(raw[a][f"layers.{layer}"], raw[b][f"layers.{layer}"])) < 1e-6
        np.testing.assert_array_equal(np.diag(m), 1.0)
        np.testing.assert_array_equal(m, m.T)
        assert m[0, 3] == pytest.approx(-1.0, abs=1e-12)
        assert np.all(np.abs(m) <= 1.0)


def test_missing_layers_and_zero_directions_are_nan() -> None:
    zero = SteeringVector({2: torch.zeros(D)}, hidden_size=D, num_layers=L, model_fingerprint="f" * 16)
    vectors = {"a": vec(0), "part": vec(1, layers=[1, 2]), "zero": zero}
    m = sc.cosine_matrix(vectors, 1)
    assert not np.isnan(m[0, 1]) and np.isnan(m[0, 2]) and np.isnan(m[2, 2])
    m2 = sc.cosine_matrix(vectors, 2)
    assert np.isnan(m2[0, 2]) and np.isnan(m2[2, 2]) and m2[1, 1] == 1.0
    assert sorted(sc.cosine_matrices(vectors)) == [1, 2]  # layers at least two vectors share
    assert sorted(sc.cosine_matrices(vectors, [0, 5])) == [0, 5]


def test_pairwise_rows_match_matrix() -> None:
    vectors = {"a": vec(0), "b": vec(1, layers=[0, 1]), "c": vec(2)}
    rows = sc.pairwise_cosine(vectors)
    by_key = {(r["layer"], r["a"], r["b"]): r["cosine"] for r in rows}
    assert (3, "a", "b") not in by_key and (3, "a", "c") in by_key
    assert by_key[(0, "a", "b")] == pytest.approx(sc.cosine_matrix(vectors, 0)[0, 1])
    assert len(rows) == 2 * 3 + (L - 2) * 1


def test_cross_model_cosine_is_refused_with_a_clear_error() -> None:
    a, b = vec(0, model="smollm2", fingerprint="1" * 16), vec(1, model="qwen", fingerprint="2" * 16)
    with pytest.raises(
        sc.CrossModelError, match=r"'a' \(model 'smollm2'\) and 'b' \(model 'qwen'\) come from different models.*behaviour profiles"
    ):
        sc.cosine_matrix({"a": a, "b": b}, 0)
    with pytest.raises(sc.CrossModelError, match="hidden sizes 32 and 64"):
        sc.cosine_matrices({"a": a, "wide": vec(2, width=64, fingerprint="1" * 16)})
    with pytest.raises(VectorMismatchError):  # the vector type's own check agrees
        a.cosine(b)
    with pytest.raises(sc.CrossModelError):
        sc.analogy({"a": a, "b": b, "c": vec(2), "d": vec(3)}, "a", "b", "c", 0)


def test_unknown_fingerprint_is_compared_by_hidden_size() -> None:
    foreign = vec(5, fingerprint="unknown", model="unknown")
    m = sc.cosine_matrix({"ours": vec(0), "foreign": foreign}, 0)
    assert m.shape == (2, 2) and not np.isnan(m[0, 1])


def test_layer_similarity_equals_numpy() -> None:
    v = vec(3)
    layers, m = sc.layer_similarity(v)
    assert layers == list(range(L))
    for i in layers:
        for j in layers:
            assert abs(m[i, j] - numpy_cos(v.directions[i].numpy(), v.directions[j].numpy())) < 1e-6
    np.testing.assert_array_equal(np.diag(m), 1.0)
    np.testing.assert_array_equal(m, m.T)
    # A direction that only changes scale (and sign) through depth.
    base = torch.randn(D)
    steady = SteeringVector({i: base * (i + 1) * (-1) ** i for i in range(4)}, hidden_size=D, num_layers=L)
    _, s = sc.layer_similarity(steady)
    np.testing.assert_allclose(np.abs(s), 1.0, atol=1e-12)
    assert s[0, 1] == pytest.approx(-1.0)
    assert sc.layer_similarity(v, [4, 1, 9])[0] == [1, 4]


def test_norms_equal_numpy() -> None:
    vectors = {"a": vec(0), "b": vec(1, layers=[2])}
    norms = sc.norms(vectors)
    assert list(norms["b"]) == [2]
    for name, v in vectors.items():
        for layer, value in norms[name].items():
            assert value == pytest.approx(float(np.linalg.norm(v.directions[layer].numpy())), rel=1e-6)
