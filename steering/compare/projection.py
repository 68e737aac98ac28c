"""Project labelled activations onto vectors: scores, AUROC per layer, 2-D embeddings.

The projection of an activation ``x`` onto a vector's direction ``v`` at a
layer is ``x . v / |v|`` (a length along the unit direction). AUROC is the
probability that a random positive example projects higher than a random
negative one (ties count half), from the rank-sum (Mann-Whitney) formula: 1
separates perfectly in the vector's direction, 0.5 is chance, and 0 means
perfectly separated the other way round (``auroc(-v) = 1 - auroc(v)``).

AUROC on the same pairs a vector was extracted from is in-sample and
optimistic; `separation` reports ``in_sample`` when the vector's recorded
``dataset_sha256`` equals the activations'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from steering.hooks import SteeringError

from .activations import LabelledActivations
from .similarity import Vectors


def project(features: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Scalar projections ``[n]`` of ``features`` ``[n, d]`` onto the unit ``direction`` ``[d]``.

    Example:
        >>> project(np.array([[3.0, 4.0]]), np.array([0.0, 2.0]))
        array([4.])
    """
    direction = np.asarray(direction, dtype=np.float64)
    norm = np.linalg.norm(direction)
    if norm == 0:
        raise SteeringError("cannot project onto a zero direction")
    return np.asarray(features, dtype=np.float64) @ (direction / norm)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive); NaN if a class is empty.

    Example:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_pos = int((labels == 1).sum())
    n_neg = int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # scipy.stats is slow to import; only here

    ranks = rankdata(scores)  # average ranks: ties count half
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def projections(vectors: Vectors, acts: LabelledActivations, layer: int) -> dict[str, np.ndarray]:
    """Each vector's projections of the activations at ``layer`` (vectors lacking it are left out)."""
    if layer not in acts.features:
        raise SteeringError(f"no activations at layer {layer} (have {acts.layers})")
    return {name: project(acts.features[layer], v.directions[layer].numpy()) for name, v in vectors.items() if layer in v.directions}


def separation(vectors: Vectors, acts: LabelledActivations, layers: Iterable[int] | None = None) -> dict[str, dict[int, float]]:
    """AUROC of each vector's projection at each layer it shares with the activations.

    Example:
        >>> sep = separation({"sentiment": vec}, acts)  # doctest: +SKIP
        >>> max(sep["sentiment"], key=sep["sentiment"].get)  # best layer  # doctest: +SKIP
    """
    wanted = set(acts.layers if layers is None else layers) & set(acts.layers)
    out: dict[str, dict[int, float]] = {}
    for name, vec in vectors.items():
        out[name] = {
            layer: auroc(project(acts.features[layer], vec.directions[layer].numpy()), acts.labels)
            for layer in sorted(wanted & set(vec.layers))
        }
    return out


def best_layers(sep: Mapping[str, Mapping[int, float]]) -> dict[str, tuple[int, float]]:
    """The layer with the highest AUROC for each vector (vectors with no layers are left out)."""
    out = {}
    for name, by_layer in sep.items():
        finite = {i: a for i, a in by_layer.items() if not np.isnan(a)}
        if finite:
            layer = max(finite, key=lambda i: (finite[i], -i))
            out[name] = (layer, finite[layer])
    return out


def in_sample(vectors: Vectors, acts: LabelledActivations) -> dict[str, bool]:
    """Whether each vector was extracted from exactly these pairs (its AUROC is then optimistic)."""
    return {name: acts.dataset_sha256 is not None and v.dataset_sha256 == acts.dataset_sha256 for name, v in vectors.items()}


def embed_2d(features: np.ndarray, method: str = "pca", *, seed: int = 0, perplexity: float | None = None) -> np.ndarray:
    """2-D coordinates ``[n, 2]`` of ``features`` ``[n, d]`` by PCA or t-SNE.

    t-SNE runs on the first 50 principal components (a standard speed-up), with
    perplexity ``min(30, (n - 1) / 3)`` unless given, and a fixed ``seed``.

    Example:
        >>> xy = embed_2d(acts.features[12], "tsne")  # doctest: +SKIP
    """
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise SteeringError(f"need at least 3 examples to embed, got shape {x.shape}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
        perp = perplexity if perplexity is not None else min(30.0, (x.shape[0] - 1) / 3)
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(reduced)
    raise SteeringError(f"unknown embedding {method!r}; choose 'pca' or 'tsne'")
