"""One call for the whole comparison: every number the report shows, as plain data.

`compare_vectors` gathers the geometry of a set of vectors (cosines, layer x
layer similarity, norms) and, given labelled activations, how well each
vector separates them at each layer, their projections and 2-D embeddings at
a few chosen layers, and any analogy checks. `to_jsonable` turns the result
into JSON (NaN becomes ``null``). Plotting lives in `steering.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from steering.hooks import SteeringError

from .activations import LabelledActivations
from .analogies import analogy_check
from .projection import best_layers, embed_2d, in_sample, projections, separation
from .similarity import Vectors, check_same_space, cosine_matrices, layer_similarity, layer_union, norms


def spread_layers(layers: Sequence[int], count: int = 3) -> list[int]:
    """Up to ``count`` layers spread evenly over ``layers`` (early, middle, late).

    Example:
        >>> spread_layers(list(range(30)))
        [7, 14, 22]
    """
    ordered = sorted(set(layers))
    if len(ordered) <= count:
        return ordered
    picks = {ordered[round((k + 1) * (len(ordered) - 1) / (count + 1))] for k in range(count)}
    return sorted(picks)


def vector_info(vectors: Vectors) -> dict[str, dict[str, Any]]:
    """Metadata of each vector, for tables."""
    return {name: {**v.metadata(), "layers": v.layers} for name, v in vectors.items()}


def compare_vectors(
    vectors: Vectors,
    *,
    layers: Iterable[int] | None = None,
    activations: LabelledActivations | None = None,
    plot_layers: Iterable[int] | None = None,
    embed: Sequence[str] = ("pca", "tsne"),
    analogies: Sequence[Sequence[str]] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Every comparison number for ``vectors`` (same model), as numpy arrays and dicts.

    Args:
        vectors: name -> vector, all from one model (else `CrossModelError`).
        layers: layers to compare (default: every layer of any vector).
        activations: labelled activations (`pair_activations` /
            `text_activations`) for projections, AUROC and embeddings.
        plot_layers: layers for embeddings and projection histograms
            (default: three spread over the activation layers).
        embed: 2-D embeddings to compute: ``pca`` and/or ``tsne``.
        analogies: ``[a, b, c, d]`` name quadruples to test (``a - b + c ~ d``).
        seed: for t-SNE.

    Returns:
        A dict with keys ``names``, ``vectors`` (metadata), ``layers``,
        ``cosine`` ({layer: [n, n]}), ``layer_similarity`` ({name: {"layers",
        "matrix"}}), ``norms``, ``analogies``; with activations also
        ``separation`` ({name: {layer: auroc}}), ``best_layers``,
        ``in_sample``, ``plot_layers``, ``labels``, ``projections``
        ({layer: {name: [n]}}) and ``embeddings`` ({method: {layer: [n, 2]}}).

    Example:
        >>> res = compare_vectors({"sentiment": s, "formality": f}, activations=acts)  # doctest: +SKIP
        >>> res["cosine"][12][0, 1]  # doctest: +SKIP
    """
    check_same_space(vectors)
    available = layer_union(vectors)
    chosen = available if layers is None else sorted(set(layers))
    missing = sorted(set(chosen) - set(available))
    if missing:
        raise SteeringError(f"layers {missing} are in none of the vectors (they have {available})")
    subset = {n: v.select([i for i in v.layers if i in chosen]) for n, v in vectors.items() if set(v.layers) & set(chosen)}
    result: dict[str, Any] = {
        "names": list(vectors),
        "vectors": vector_info(vectors),
        "layers": chosen,
        "cosine": cosine_matrices(vectors, [i for i in layer_union(subset, min(2, len(subset)))]),
        "layer_similarity": {},
        "norms": norms(subset),
        "analogies": analogy_check(vectors, analogies, chosen) if analogies else [],
    }
    for name, vec in subset.items():
        sim_layers, matrix = layer_similarity(vec)
        result["layer_similarity"][name] = {"layers": sim_layers, "matrix": matrix}
    if activations is None:
        return result

    act_layers = sorted(set(activations.layers) & set(chosen))
    if not act_layers:
        raise SteeringError(f"the activations' layers {activations.layers} share none with the compared layers {chosen}")
    sep = separation(vectors, activations, act_layers)
    shown = spread_layers(act_layers) if plot_layers is None else sorted(set(plot_layers))
    absent = sorted(set(shown) - set(act_layers))
    if absent:
        raise SteeringError(f"plot_layers {absent} have no activations (activations at {act_layers})")
    result.update(
        separation=sep,
        best_layers=best_layers(sep),
        in_sample=in_sample(vectors, activations),
        activation_source=activations.source,
        plot_layers=shown,
        labels=activations.labels,
        projections={layer: projections(vectors, activations, layer) for layer in shown},
        embeddings={method: {layer: embed_2d(activations.features[layer], method, seed=seed) for layer in shown} for method in embed},
    )
    return result


def to_jsonable(obj: Any) -> Any:
    """Numpy arrays and scalars to lists and floats, NaN/inf to ``None``, int keys to strings."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    return obj
