"""The one-vector modes (clamp, angular, affine) against a numpy re-implementation on recorded activations."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import random_vector
from tiny_models import make_tiny

import steering as st

PROMPTS = ["Tell me about the sea", "Hi"]
LAYER = 1


def _numpy_op(mode: str, h: np.ndarray, v: np.ndarray, coef: float, mu: np.ndarray | None) -> np.ndarray:
    """Independent reference of each mode, per token row of ``h`` ``[n, d]`` (float64)."""
    u = v / np.linalg.norm(v)
    along = h @ u
    if mode == "angular":
        out = np.empty_like(h)
        for k, row in enumerate(h):
            p = row - along[k] * u
            pn = np.linalg.norm(p)
            phi = math.atan2(pn, along[k]) - math.radians(coef)
            out[k] = np.linalg.norm(row) * (math.cos(phi) * u + math.sin(phi) * p / pn)
        return out
    target = {
        "clamp": coef * np.linalg.norm(v),
        "affine_ablate": None if mu is None else mu @ u,
        "affine_add": None if mu is None else mu @ u + coef * np.linalg.norm(v),
    }[mode]
    return h + (target - along)[:, None] * u[None, :]


def _with_reference(vec: st.SteeringVector, seed: int = 1) -> st.SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    return dataclasses.replace(vec, reference={i: torch.randn(vec.hidden_size, generator=gen) for i in vec.layers})


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])  # three layouts; the ops are layout-free
@pytest.mark.parametrize(
    "mode,coef", [("clamp", 1.5), ("clamp", -0.5), ("angular", 30.0), ("angular", -120.0), ("affine_add", 2.0), ("affine_ablate", 0.0)]
)
def test_mode_matches_numpy_reference(arch: str, mode: str, coef: float) -> None:
    model, tok = make_tiny(arch)
    vec = _with_reference(random_vector(model, [LAYER], scale=2.0))
    tok.padding_side = "left"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with st.record(model, layers=[LAYER]) as plain:
        model(**batch)
    with st.steer(model, vec, coef=coef, mode=mode), st.record(model, layers=[LAYER]) as steered:
        model(**batch)
    h = plain[LAYER].double().numpy().reshape(-1, vec.hidden_size)
    mu = vec.reference[LAYER].double().numpy()
    want = _numpy_op(mode, h, vec.directions[LAYER].double().numpy(), coef, mu)
    got = steered[LAYER].double().numpy().reshape(-1, vec.hidden_size)
    np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, np.abs(want).max()), rtol=1e-4)
    if mode == "angular":  # the dial keeps the norm
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(h, axis=1), rtol=1e-5)


@torch.no_grad()
def test_modes_respect_apply_to_and_leave_other_tokens() -> None:
    model, tok = make_tiny("llama")
    vec = random_vector(model, [LAYER], scale=2.0)
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with st.record(model, layers=[LAYER]) as plain:
        model(**batch)
    with st.steer(model, vec, coef=45.0, mode="angular", apply_to="generated"), st.record(model, layers=[LAYER]) as rec:
        model(**batch)  # a prompt pass: no generated token, nothing changes
    torch.testing.assert_close(rec[LAYER], plain[LAYER], atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["clamp", "angular", "affine_add", "affine_ablate"])
def test_modes_refuse_fold_and_fall_back_under_auto(mode: str) -> None:
    model, tok = make_tiny("llama")
    vec = _with_reference(random_vector(model, [LAYER]))
    with pytest.raises(st.SteeringError, match="needs the hook backend"):
        st.attach(model, vec, coef=1.0, mode=mode, backend="fold")
    with st.steer(model, vec, coef=1.0, mode=mode) as group:  # auto: hooks, no warning needed
        assert "backend=hook" in repr(group)


def test_mode_errors_name_the_problem() -> None:
    model, tok = make_tiny("llama")
    vec = random_vector(model, [LAYER])
    with pytest.raises(st.SteeringError, match="reference mean"):
        st.attach(model, vec, coef=1.0, mode="affine_add")
    with pytest.raises(st.SteeringError, match="degrees"):
        st.attach(model, vec, coef=200.0, mode="angular")
    with pytest.raises(st.SteeringError, match="one vector per layer"):
        st.attach(model, [(vec, 1.0), (vec * 2, 1.0)], mode="clamp")
    with pytest.raises(st.SteeringError, match="unknown mode 'spin'"):
        st.attach(model, vec, mode="spin")  # type: ignore[arg-type]


@torch.no_grad()
def test_clamp_of_unit_vector_sets_absolute_value_and_angular_zero_is_identity() -> None:
    model, tok = make_tiny("llama")
    vec = random_vector(model, [LAYER], scale=3.0)
    batch = tok(PROMPTS[:1], return_tensors="pt")
    unit = vec.directions[LAYER] / vec.directions[LAYER].norm()
    with st.steer(model, vec.normalized(), coef=0.7, mode="clamp"), st.record(model, layers=[LAYER]) as rec:
        model(**batch)
    torch.testing.assert_close(rec[LAYER] @ unit, torch.full(rec[LAYER].shape[:2], 0.7), atol=1e-5, rtol=0)
    with st.record(model, layers=[LAYER]) as plain:
        model(**batch)
    with st.steer(model, vec, coef=0.0, mode="angular"), st.record(model, layers=[LAYER]) as rec:
        model(**batch)
    torch.testing.assert_close(rec[LAYER], plain[LAYER], atol=1e-5, rtol=1e-5)
