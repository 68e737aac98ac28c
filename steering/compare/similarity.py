"""Geometry of a set of vectors: cosine across vectors, across layers, and norms.

All functions take vectors by name (``{"sentiment": v1, "formality": v2}``,
order kept) and return plain numpy arrays and dicts. Cosines are computed in
float64 from the stored float32 tensors, so they match numpy on the same
safetensors tensors to ~1e-15. A cosine is undefined (NaN) where a vector
lacks the layer or has a zero direction there.

Vectors made on different models live in different activation spaces: any
function here raises `CrossModelError` rather than return a number for them.
Compare such vectors through behaviour profiles (`steering.compare.profiles`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from steering.vectors import SteeringVector, VectorMismatchError
from steering.vectors.model_info import same_checkpoint
from steering.vectors.vector import UNKNOWN

Vectors = Mapping[str, SteeringVector]


class CrossModelError(VectorMismatchError):
    """Vectors from different models: no cosine between different activation spaces."""


def check_same_space(vectors: Vectors) -> None:
    """Raise `CrossModelError` unless all vectors share hidden size and (known) model fingerprint.

    A vector with an ``unknown`` fingerprint (imported from another tool
    without naming its model) is accepted if its hidden size matches.

    Example:
        >>> check_same_space({"a": v_smollm, "b": v_qwen})  # doctest: +SKIP
        Traceback (most recent call last):
        CrossModelError: vectors 'a' (model 'smollm2...') and 'b' (model 'qwen...') come from different models ...
    """
    items = list(vectors.items())
    if not items:
        raise VectorMismatchError("no vectors given")
    for name, vec in items[1:]:
        first_name, first = items[0]
        if vec.hidden_size != first.hidden_size:
            raise CrossModelError(_cross_message(first_name, first, name, vec, f"hidden sizes {first.hidden_size} and {vec.hidden_size}"))
    known = [(n, v) for n, v in items if v.model_fingerprint != UNKNOWN]
    for name, vec in known[1:]:
        first_name, first = known[0]
        if same_checkpoint(first.model_fingerprint, vec.model_fingerprint) is False:
            raise CrossModelError(
                _cross_message(first_name, first, name, vec, f"fingerprints {first.model_fingerprint} and {vec.model_fingerprint}")
            )


def _cross_message(a: str, va: SteeringVector, b: str, vb: SteeringVector, why: str) -> str:
    return (
        f"vectors {a!r} (model {va.model!r}) and {b!r} (model {vb.model!r}) come from different models ({why}): "
        "a cosine between different activation spaces means nothing. Compare them through behaviour profiles "
        "instead (steering.compare.compare_profiles, or `steering compare profiles=[...]`)"
    )


def layer_union(vectors: Vectors, min_count: int = 1) -> list[int]:
    """Sorted layers present in at least ``min_count`` of the vectors."""
    counts: dict[int, int] = {}
    for vec in vectors.values():
        for layer in vec.layers:
            counts[layer] = counts.get(layer, 0) + 1
    return sorted(layer for layer, n in counts.items() if n >= min_count)


def _unit_rows(rows: list[np.ndarray | None], width: int) -> np.ndarray:
    """Stack float64 rows scaled to unit norm; missing or zero rows become NaN."""
    out = np.full((len(rows), width), np.nan)
    for k, row in enumerate(rows):
        if row is None:
            continue
        norm = np.linalg.norm(row)
        if norm > 0:
            out[k] = row / norm
    return out


def cosine_matrix(vectors: Vectors, layer: int) -> np.ndarray:
    """``[n, n]`` cosine between every two vectors at ``layer`` (NaN where one lacks it).

    Symmetric, with 1 on the diagonal for every vector that has the layer.

    Example:
        >>> m = cosine_matrix({"a": a, "b": b, "-a": -a}, layer=12)  # doctest: +SKIP
        >>> m[0, 2]  # doctest: +SKIP
        -1.0
    """
    check_same_space(vectors)
    width = next(iter(vectors.values())).hidden_size
    rows = [v.directions[layer].double().numpy() if layer in v.directions else None for v in vectors.values()]
    unit = _unit_rows(rows, width)
    matrix = np.clip(unit @ unit.T, -1.0, 1.0)
    present = ~np.isnan(unit[:, 0])
    # Exact 1 on the diagonal (rounding can give 1 - 1e-16) and exact symmetry.
    matrix = (matrix + matrix.T) / 2
    matrix[np.diag_indices_from(matrix)] = np.where(present, 1.0, np.nan)
    return matrix


def cosine_matrices(vectors: Vectors, layers: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """`cosine_matrix` at each layer (default: every layer at least two vectors share)."""
    chosen = layer_union(vectors, min_count=min(2, len(vectors))) if layers is None else sorted(set(layers))
    return {layer: cosine_matrix(vectors, layer) for layer in chosen}


def pairwise_cosine(vectors: Vectors, layers: Iterable[int] | None = None) -> list[dict[str, object]]:
    """Long-form rows ``{layer, a, b, cosine}`` for each unordered pair sharing a layer."""
    names = list(vectors)
    rows: list[dict[str, object]] = []
    for layer, matrix in cosine_matrices(vectors, layers).items():
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if not np.isnan(matrix[i, j]):
                    rows.append({"layer": layer, "a": names[i], "b": names[j], "cosine": float(matrix[i, j])})
    return rows


def layer_similarity(vector: SteeringVector, layers: Iterable[int] | None = None) -> tuple[list[int], np.ndarray]:
    """Cosine between the vector's own directions at every two layers: ``(layers, [L, L])``.

    High values off the diagonal mean the direction stays the same through depth.

    Example:
        >>> layers, m = layer_similarity(vec)  # doctest: +SKIP
    """
    chosen = vector.layers if layers is None else [i for i in sorted(set(layers)) if i in vector.directions]
    unit = _unit_rows([vector.directions[i].double().numpy() for i in chosen], vector.hidden_size)
    matrix = np.clip(unit @ unit.T, -1.0, 1.0)
    matrix = (matrix + matrix.T) / 2
    matrix[np.diag_indices_from(matrix)] = np.where(~np.isnan(unit[:, 0]), 1.0, np.nan)
    return chosen, matrix


def norms(vectors: Vectors) -> dict[str, dict[int, float]]:
    """L2 norm of each vector's direction at each of its layers."""
    return {name: vec.norms() for name, vec in vectors.items()}
