"""Linear analogies between behaviour vectors: is ``a - b + c`` nearest to ``d``?

As with word vectors (king - man + woman ~ queen), each vector is first scaled
to unit length at the layer, so a large-norm vector does not dominate; then
``a - b + c`` is ranked against every candidate by cosine. By default ``a``,
``b`` and ``c`` are left out of the candidates (otherwise they often win
trivially), as in the usual word-analogy test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from steering.hooks import SteeringError

from .similarity import Vectors, check_same_space


def _unit(vectors: Vectors, name: str, layer: int) -> np.ndarray:
    if name not in vectors:
        raise SteeringError(f"analogy names {name!r}, which is not among the vectors ({', '.join(vectors)})")
    vec = vectors[name]
    if layer not in vec.directions:
        raise SteeringError(f"vector {name!r} has no layer {layer} (it has {vec.layers})")
    row = vec.directions[layer].double().numpy()
    norm = np.linalg.norm(row)
    if norm == 0:
        raise SteeringError(f"vector {name!r} is zero at layer {layer}")
    return row / norm


def analogy(
    vectors: Vectors,
    a: str,
    b: str,
    c: str,
    layer: int,
    *,
    candidates: Iterable[str] | None = None,
    exclude_inputs: bool = True,
) -> list[tuple[str, float]]:
    """Candidates ranked by cosine with ``unit(a) - unit(b) + unit(c)`` at ``layer``, best first.

    Example:
        >>> analogy(vecs, "formal_happy", "formal_sad", "casual_sad", layer=12)[0]  # doctest: +SKIP
        ('casual_happy', 0.83)
    """
    check_same_space(vectors)
    query = _unit(vectors, a, layer) - _unit(vectors, b, layer) + _unit(vectors, c, layer)
    q_norm = np.linalg.norm(query)
    pool = list(vectors) if candidates is None else list(candidates)
    if exclude_inputs:
        pool = [n for n in pool if n not in (a, b, c)]
    pool = [n for n in pool if layer in vectors[n].directions]
    if not pool:
        raise SteeringError(f"no candidate vectors at layer {layer} for {a} - {b} + {c}")
    if q_norm == 0:
        return [(n, float("nan")) for n in pool]
    ranked = [(n, float(np.clip(_unit(vectors, n, layer) @ query / q_norm, -1, 1))) for n in pool]
    return sorted(ranked, key=lambda item: -item[1])


def analogy_check(vectors: Vectors, quads: Sequence[Sequence[str]], layers: Iterable[int]) -> list[dict[str, Any]]:
    """For each ``(a, b, c, d)`` and layer: the ranking of ``a - b + c``, whether ``d`` is nearest, and its rank.

    Returns rows ``{layer, query, expected, nearest, nearest_cosine,
    expected_cosine, expected_rank (1 = nearest), hit}``; layers where one of
    the four vectors is missing are skipped.

    Example:
        >>> rows = analogy_check(vecs, [("a", "b", "c", "d")], layers=[12])  # doctest: +SKIP
    """
    rows: list[dict[str, Any]] = []
    for quad in quads:
        if len(quad) != 4:
            raise SteeringError(f"an analogy needs four names [a, b, c, d] (a - b + c ~ d), got {list(quad)}")
        a, b, c, d = (str(n) for n in quad)
        for name in (a, b, c, d):
            if name not in vectors:
                raise SteeringError(f"analogy names {name!r}, which is not among the vectors ({', '.join(vectors)})")
        if d in (a, b, c):
            raise SteeringError(f"analogy {list(quad)}: the expected vector {d!r} is also an input, and inputs are not candidates")
        for layer in sorted(set(layers)):
            if any(layer not in vectors[n].directions for n in (a, b, c, d)):
                continue
            ranking = analogy(vectors, a, b, c, layer)
            names = [n for n, _ in ranking]
            rows.append(
                {
                    "layer": layer,
                    "query": f"{a} - {b} + {c}",
                    "expected": d,
                    "nearest": names[0],
                    "nearest_cosine": ranking[0][1],
                    "expected_cosine": ranking[names.index(d)][1],
                    "expected_rank": names.index(d) + 1,
                    "hit": names[0] == d,
                    "ranking": ranking,
                }
            )
    return rows
