"""Tests for vectors.coef.check_coef: the one coefficient policy of library, CLI and server."""

from __future__ import annotations

import math

import pytest
import torch

from steering.vectors import MAX_COEF, MAX_DELTA_NORM, CoefError, SteeringVector, check_coef


def _vector(norm: float) -> SteeringVector:
    return SteeringVector({0: torch.ones(4) / 2 * norm, 1: torch.ones(4) / 4}, hidden_size=4, num_layers=2)


@pytest.mark.parametrize("coef", [0, 4, -4.5, MAX_COEF, -MAX_COEF])
def test_accepts_real_finite_coefs_within_the_bound(coef) -> None:
    assert check_coef(coef) == float(coef) and type(check_coef(coef)) is float


@pytest.mark.parametrize(
    ("coef", "message"),
    [
        (float("nan"), "coef=nan is not a finite number"),
        (math.inf, "coef=inf is not a finite number"),
        (1e30, r"coef=1e\+30 is out of range; \|coef\| must be <= 10000"),
        (-MAX_COEF * 1.01, "out of range"),
        (True, "coef=True is not a number"),
        ("4", "coef='4' is not a number"),
        (torch.tensor(4.0), "is not a number"),
        (None, "coef=None is not a number"),
    ],
)
def test_refuses_with_the_value_in_the_message(coef, message) -> None:
    with pytest.raises(CoefError, match=message):
        check_coef(coef)


def test_bound_tied_to_the_vectors_largest_layer_norm() -> None:
    vec = _vector(1000.0)  # layer 0 has norm 1000
    assert check_coef(MAX_DELTA_NORM / 1000, vec) == 100.0
    with pytest.raises(CoefError, match=r"coef=101 is out of range for a vector of norm 1000.*\|coef\| <= 100"):
        check_coef(101, vec)


def test_a_tighter_limit_and_the_name_in_the_message() -> None:
    assert check_coef(10, limit=10) == 10.0
    with pytest.raises(CoefError, match=r"steering\[0\].coef=10.5 is out of range; \|coef\| must be <= 10$"):
        check_coef(10.5, limit=10, name="steering[0].coef")
    with pytest.raises(CoefError, match="<= 10000"):  # a looser limit never widens the policy
        check_coef(2e4, limit=1e6)
