"""Steer a model with vectors: `steer` (context manager) and `attach` (handle).

Adding ``coef * v`` at each of the vector's layers turns a behaviour on
(positive coef) or off (negative). ``mode="ablate"`` instead projects the
vector's direction out of the residual stream (coef is ignored). Several
vectors apply together; their deltas are summed per layer once, up front, so
each layer runs one hook whatever the number of vectors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from hooks import AblateOp, AddOp, HookGroup, LayerError, Op, SteeringError, num_layers, patch
from vectors import SteeringVector, VectorMismatchError, hidden_size

Mode = Literal["add", "ablate"]
VectorSpec = SteeringVector | Sequence[tuple[SteeringVector, float]]


def _as_terms(vector: VectorSpec, coef: float) -> list[tuple[SteeringVector, float]]:
    if isinstance(vector, SteeringVector):
        terms = [(vector, coef)]
    else:
        terms = [(v, c) for v, c in vector]
    if not terms:
        raise SteeringError("no vectors given")
    for v, c in terms:
        if not isinstance(v, SteeringVector):
            raise SteeringError(f"expected a SteeringVector, got {type(v).__name__}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise SteeringError(f"coef must be a finite number, got {c!r}")
    return terms


def _check_fits(model: nn.Module, vector: SteeringVector) -> None:
    width, depth = hidden_size(model), num_layers(model)
    if vector.hidden_size != width:
        raise VectorMismatchError(f"vector hidden size {vector.hidden_size} does not match the model's {width}")
    bad = [i for i in vector.layers if i >= depth]
    if bad:
        raise LayerError(f"vector layers {bad} are out of range for a model with {depth} layers")


def build_ops(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    mode: str = "add",
    layers: Iterable[int] | None = None,
) -> tuple[dict[int, Op], str]:
    """Per-layer operations for ``vector`` (and the site they act at)."""
    terms = _as_terms(vector, coef)
    sites = {v.site for v, _ in terms}
    if len(sites) > 1:
        raise SteeringError(f"vectors of different sites cannot be applied together: {sorted(sites)}")
    for v, _ in terms:
        _check_fits(model, v)
    wanted = None if layers is None else set(layers)
    by_layer: dict[int, list[tuple[Tensor, float]]] = {}
    for v, c in terms:
        for layer, direction in v.directions.items():
            if wanted is None or layer in wanted:
                by_layer.setdefault(layer, []).append((direction, c))
    if wanted is not None and (missing := wanted - set(by_layer)):
        raise LayerError(f"layers {sorted(missing)} are not in the vector (it has {sorted({i for v, _ in terms for i in v.layers})})")
    ops: dict[int, Op] = {}
    for layer, items in sorted(by_layer.items()):
        if mode == "add":
            ops[layer] = AddOp(sum(c * d for d, c in items))
        elif mode == "ablate":
            ops[layer] = AblateOp(torch.stack([d for d, _ in items]))
        else:
            raise SteeringError(f"unknown mode {mode!r}; choose 'add' or 'ablate'")
    return ops, sites.pop()


def attach(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    positions: str = "all",
    mode: str = "add",
    layers: Iterable[int] | None = None,
) -> HookGroup:
    """Start steering and return the `HookGroup` that stops it (``.remove()``).

    Same arguments as `steer`; use this when steering must outlive a ``with`` block.

    Example:
        >>> group = attach(model, vec, coef=2.0)  # doctest: +SKIP
        >>> group.remove()  # idempotent
    """
    ops, site = build_ops(model, vector, coef, mode=mode, layers=layers)
    coefs = [c for _, c in _as_terms(vector, coef)]
    label = f"steer layers={sorted(ops)} site={site} mode={mode} coef={coefs if len(coefs) > 1 else coefs[0]} positions={positions}"
    return patch(model, ops, site=site, positions=positions, label=label)


@contextmanager
def steer(
    model: nn.Module,
    vector: VectorSpec,
    coef: float = 1.0,
    *,
    positions: str = "all",
    mode: str = "add",
    layers: Iterable[int] | None = None,
) -> Iterator[HookGroup]:
    """Steer ``model`` inside a ``with`` block; hooks are removed on exit, also on errors.

    Args:
        model: a Hugging Face decoder-only model.
        vector: a `SteeringVector`, or a list of ``(vector, coef)`` to apply together.
        coef: multiplier of ``vector`` (ignored for a list); negative subtracts.
        positions: ``all``, ``prompt`` or ``generated`` tokens (absolute
            positions, correct under the KV cache).
        mode: ``add`` the scaled vector, or ``ablate`` its direction.
        layers: restrict to these layers of the vector (default: all of its layers).

    Raises:
        SteeringError: bad coef, mode, positions or layers, or a vector that
            does not fit the model; nothing is left registered.

    Example:
        >>> with steer(model, vec, coef=4.0):  # doctest: +SKIP
        ...     out = model.generate(**inputs, max_new_tokens=20)
    """
    group = attach(model, vector, coef, positions=positions, mode=mode, layers=layers)
    try:
        yield group
    finally:
        group.remove()
