"""Tests for vectors.vector.SteeringVector: arithmetic, immutability, validation, mismatches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from steering.hooks import SteeringError
from steering.vectors import SteeringVector, VectorMismatchError, VectorValueError
from steering.vectors.vector import UNKNOWN

D = 8
N = 4


def vec(directions, **kw) -> SteeringVector:
    base = dict(
        hidden_size=D,
        num_layers=N,
        model="m",
        model_fingerprint="fp0",
        site="block_output",
        method="mean_diff",
        read="last",
        n_pairs=3,
        dataset_sha256="abc",
    )
    base.update(kw)
    return SteeringVector(directions, **base)


def rand(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g)


@pytest.fixture
def a():
    return vec({0: rand(0), 2: rand(1)})


@pytest.fixture
def b():
    return vec({2: rand(2), 3: rand(3)}, n_pairs=5, dataset_sha256="def")


# --------------------------------------------------------------------------- arithmetic


def test_neg(a):
    n = -a
    assert n.layers == [0, 2]
    for i in a.layers:
        assert torch.equal(n.directions[i], -a.directions[i])
    assert n.method == a.method and n.n_pairs == a.n_pairs and n.model_fingerprint == a.model_fingerprint
    assert n.dataset_sha256 == a.dataset_sha256


def test_add_disjoint_layers():
    x = vec({0: rand(0)})
    y = vec({1: rand(1)})
    s = x + y
    assert s.layers == [0, 1]
    assert torch.equal(s.directions[0], x.directions[0])
    assert torch.equal(s.directions[1], y.directions[1])


def test_add_shared_layers(a, b):
    s = a + b
    assert s.layers == [0, 2, 3]
    assert torch.allclose(s.directions[0], a.directions[0])
    assert torch.allclose(s.directions[2], a.directions[2] + b.directions[2])
    assert torch.allclose(s.directions[3], b.directions[3])
    assert s.n_pairs == a.n_pairs + b.n_pairs
    assert s.dataset_sha256 == UNKNOWN
    assert s.model_fingerprint == a.model_fingerprint and s.site == a.site
    # operands untouched
    assert a.layers == [0, 2] and b.layers == [2, 3]
    assert torch.equal(a.directions[2], rand(1))


def test_add_method_name(a):
    assert (a + a).method == "mean_diff"
    other = vec({1: rand(5)}, method="pca_diff")
    assert (a + other).method == "combination"


def test_sub(a, b):
    d = a - b
    assert d.layers == [0, 2, 3]
    assert torch.allclose(d.directions[0], a.directions[0])
    assert torch.allclose(d.directions[2], a.directions[2] - b.directions[2])
    assert torch.allclose(d.directions[3], -b.directions[3])
    zero = a - a
    for t in zero.directions.values():
        assert torch.count_nonzero(t) == 0


@pytest.mark.parametrize("k", [2, -0.5, 3.25, 0])
def test_scale_both_sides(a, k):
    for scaled in (k * a, a * k):
        assert isinstance(scaled, SteeringVector)
        for i in a.layers:
            assert torch.allclose(scaled.directions[i], a.directions[i] * k)
            assert scaled.directions[i].dtype == torch.float32


def test_scale_by_numpy_float(a):
    # numpy floats subclass Python float: accepted
    out = a * np.float64(2.0)
    assert torch.allclose(out.directions[0], 2 * a.directions[0])


def test_div(a):
    h = a / 4
    for i in a.layers:
        assert torch.allclose(h.directions[i], a.directions[i] / 4)


def test_arithmetic_with_wrong_types_raises(a):
    with pytest.raises(TypeError):
        a * "2"  # noqa: B018
    with pytest.raises(TypeError):
        a * torch.ones(D)  # noqa: B018
    with pytest.raises(TypeError):
        a + 1  # noqa: B018
    with pytest.raises(TypeError):
        a - torch.ones(D)  # noqa: B018
    with pytest.raises(TypeError):
        a / "x"  # noqa: B018


def test_normalized(a):
    n = a.normalized()
    for i in a.layers:
        assert abs(float(n.directions[i].norm()) - 1.0) < 1e-6
        cos = torch.nn.functional.cosine_similarity(n.directions[i], a.directions[i], dim=0)
        assert float(cos) > 1 - 1e-6
    assert n.norms() == pytest.approx({0: 1.0, 2: 1.0}, abs=1e-6)


def test_normalized_zero_direction_stays_finite():
    z = vec({0: torch.zeros(D)}).normalized()
    assert torch.isfinite(z.directions[0]).all()


def test_norms(a):
    assert a.norms() == pytest.approx({0: float(rand(0).norm()), 2: float(rand(1).norm())}, rel=1e-6)


def test_project_out(a, b):
    p = a.project_out(b)
    assert p.layers == a.layers
    # shared layer 2: orthogonal to b
    assert abs(float(p.directions[2] @ b.directions[2])) < 1e-5
    # and equals the textbook projection
    u = b.directions[2] / b.directions[2].norm()
    expected = a.directions[2] - (a.directions[2] @ u) * u
    assert torch.allclose(p.directions[2], expected, atol=1e-6)
    # layer only in a: unchanged
    assert torch.equal(p.directions[0], a.directions[0])
    # projecting out a direction from itself leaves ~zero
    assert float(a.project_out(a).directions[0].norm()) < 1e-5
    # the result has no component left: a second projection changes nothing
    assert torch.allclose(p.project_out(b).directions[2], p.directions[2], atol=1e-6)


def test_cosine(a, b):
    assert a.cosine(a) == pytest.approx({0: 1.0, 2: 1.0}, abs=1e-6)
    assert a.cosine(-a) == pytest.approx({0: -1.0, 2: -1.0}, abs=1e-6)
    assert a.cosine(3 * a) == pytest.approx({0: 1.0, 2: 1.0}, abs=1e-6)
    c = a.cosine(b)
    assert list(c) == [2]
    x, y = a.directions[2].numpy().astype(np.float64), b.directions[2].numpy().astype(np.float64)
    expected = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    assert c[2] == pytest.approx(expected, abs=1e-6)
    assert abs(c[2]) < 0.999  # random directions are not (anti)parallel: the check has teeth
    assert b.cosine(a)[2] == pytest.approx(c[2], abs=1e-12)


def test_cosine_no_shared_layers():
    with pytest.raises(VectorMismatchError, match="no shared layers"):
        vec({0: rand(0)}).cosine(vec({1: rand(1)}))


# --------------------------------------------------------------------------- immutability


def test_directions_mapping_is_read_only(a):
    with pytest.raises(TypeError):
        a.directions[1] = torch.zeros(D)  # type: ignore[index]
    with pytest.raises(TypeError):
        del a.directions[0]  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        a.extra["x"] = "y"  # type: ignore[index]
    assert a.layers == [0, 2]


def test_input_tensor_is_copied():
    t = torch.ones(D)
    v = vec({0: t})
    t.mul_(5)
    assert torch.equal(v.directions[0], torch.ones(D))
    # nor does the vector share storage with the input
    assert v.directions[0].data_ptr() != t.data_ptr()


def test_input_mapping_is_copied():
    d = {0: torch.ones(D)}
    v = vec(d)
    d[1] = torch.ones(D)
    assert v.layers == [0]


def test_attributes_cannot_be_set(a):
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.directions = {}  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.model = "other"  # type: ignore[misc]


def test_arithmetic_does_not_change_operands(a, b):
    before = {i: t.clone() for i, t in a.directions.items()}
    _ = a + b, a - b, -a, 2 * a, a / 3, a.normalized(), a.project_out(b)
    for i, t in before.items():
        assert torch.equal(a.directions[i], t)


def test_tensors_stored_as_float32_cpu():
    v = vec({0: torch.ones(D, dtype=torch.float64), 1: torch.ones(D, dtype=torch.bfloat16)})
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in v.directions.values())


def test_layers_sorted():
    v = vec({3: rand(0), 0: rand(1), 2: rand(2)})
    assert v.layers == [0, 2, 3]
    assert list(v.norms()) == [0, 2, 3]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [torch.ones(D + 1), torch.ones(1, D), torch.ones(D, 1), torch.tensor(1.0)])
def test_wrong_shape(bad):
    with pytest.raises(VectorMismatchError, match=r"layer 1: expected shape \(8,\)"):
        vec({0: torch.ones(D), 1: bad})


def test_not_a_tensor():
    with pytest.raises(VectorMismatchError, match="list"):
        vec({0: [1.0] * D})


@pytest.mark.parametrize("layer", [N, N + 5, -1])
def test_layer_out_of_range(layer):
    with pytest.raises(VectorMismatchError, match=rf"layer {layer} is outside 0\.\.{N - 1}"):
        vec({layer: torch.ones(D)})


def test_non_int_layer():
    with pytest.raises(VectorMismatchError, match="'1'"):
        vec({"1": torch.ones(D)})


def test_empty():
    with pytest.raises(VectorMismatchError, match="at least one layer"):
        vec({})


def test_mismatch_error_types():
    assert issubclass(VectorMismatchError, SteeringError) and issubclass(VectorMismatchError, ValueError)


# --------------------------------------------------------------------------- mismatches


def test_different_hidden_size(a):
    other = SteeringVector({0: torch.ones(D * 2)}, hidden_size=D * 2, num_layers=N, model_fingerprint="fp0")
    for op in (lambda: a + other, lambda: a - other, lambda: a.cosine(other), lambda: a.project_out(other)):
        with pytest.raises(VectorMismatchError, match=rf"hidden size {D} and {D * 2}"):
            op()


def test_different_fingerprint(a):
    other = vec({0: rand(9)}, model="other-model", model_fingerprint="fp1")
    for op in (lambda: a + other, lambda: a - other, lambda: a.cosine(other), lambda: a.project_out(other)):
        with pytest.raises(VectorMismatchError) as info:
            op()
        message = str(info.value)
        assert "different models" in message and "'m'" in message and "'other-model'" in message


def test_fingerprints_of_different_formats_combine_with_a_warning(a):
    """A format-1 fingerprint (no prefix) and a format-2 one hash different things: not comparable."""
    other = vec({0: rand(9)}, model_fingerprint="fp2:0123456789abcdef")
    with pytest.warns(RuntimeWarning, match="different formats"):
        assert (a + other).layers == [0, 2]
    newer = vec({0: rand(9)}, model_fingerprint="fp2:fedcba9876543210")
    with pytest.raises(VectorMismatchError, match="different models"):  # same format: compared
        other + newer


def test_unknown_fingerprint_combines(a):
    other = vec({0: rand(9)}, model_fingerprint=UNKNOWN)
    assert (a + other).layers == [0, 2]
    assert (other + a).layers == [0, 2]


def test_different_site_on_add(a):
    other = vec({0: rand(9)}, site="attn_output")
    with pytest.raises(VectorMismatchError, match="block_output.*attn_output"):
        a + other  # noqa: B018
    with pytest.raises(VectorMismatchError, match="attn_output"):
        a - other  # noqa: B018


# --------------------------------------------------------------------------- select / metadata


def test_select(a):
    s = a.select([2])
    assert s.layers == [2]
    assert torch.equal(s.directions[2], a.directions[2])
    assert s.metadata() == a.metadata()
    assert a.layers == [0, 2]
    assert a.select(iter([2, 0])).layers == [0, 2]


def test_select_missing_layer(a):
    with pytest.raises(VectorMismatchError, match=r"\[1\].*\[0, 2\]"):
        a.select([0, 1])


def test_metadata(a):
    meta = vec({0: rand(0)}, extra={"note": "hi", "k": 3}).metadata()
    assert meta == {
        "hidden_size": str(D),
        "num_layers": str(N),
        "model": "m",
        "model_fingerprint": "fp0",
        "site": "block_output",
        "method": "mean_diff",
        "read": "last",
        "n_pairs": "3",
        "dataset_sha256": "abc",
        "note": "hi",
        "k": "3",
    }
    assert all(isinstance(v, str) for v in meta.values())


def test_metadata_fields_win_over_extra():
    meta = vec({0: rand(0)}, extra={"model": "spoofed"}).metadata()
    assert meta["model"] == "m"


def test_defaults():
    v = SteeringVector({0: torch.ones(4)}, hidden_size=4, num_layers=1)
    assert v.model == UNKNOWN and v.model_fingerprint == UNKNOWN and v.site == "block_output" and v.n_pairs == 0


def test_repr(a):
    r = repr(a)
    assert "SteeringVector(" in r and "'m'" in r and "mean_diff" in r and "0:" in r and "2:" in r


# --------------------------------------------------------------------------- finite values, layer indices
@pytest.mark.parametrize(
    "make",
    [
        lambda v: v * float("nan"),
        lambda v: float("inf") * v,
        lambda v: v / 0.0,
        lambda v: v * 1e38 * 1e38,  # overflows float32 to inf
        lambda v: vec({0: torch.full((D,), float("nan"))}),
        lambda v: v + vec({0: torch.full((D,), float("inf"))}),
    ],
)
def test_vectors_with_nan_or_inf_cannot_be_made(a, make) -> None:
    with pytest.raises(VectorValueError, match="NaN or inf|finite|divide"):
        make(a)


def test_every_vector_that_exists_saves_and_loads(tmp_path, a) -> None:
    big = a * 1e30  # finite, so it is a vector, and its file loads back
    assert SteeringVector.load(big.save(tmp_path / "big.safetensors")).norms() == big.norms()


def test_select_counts_negative_layers_from_the_models_end(a) -> None:
    assert a.select([-2]).layers == [2]  # N = 4 layers: -2 is layer 2
    assert a.select(np.array([0, -2])).layers == [0, 2]
    with pytest.raises(VectorMismatchError, match=r"layers \[3\] are not in this vector"):
        a.select([-1])
    with pytest.raises(SteeringError, match="out of range"):
        a.select([-5])


@pytest.mark.parametrize("bad", ["2", [True], [2.0]])
def test_select_refuses_layers_that_are_not_integers(a, bad) -> None:
    with pytest.raises(SteeringError, match="string|not an integer"):
        a.select(bad)
