"""Extraction methods: small pure functions from activation statistics to a direction.

Activations are reduced on the fly into `LayerStats` (running sums), so memory
does not grow with the number of pairs; a method says which extra statistics
it needs. Methods are registered by name in `METHODS`, so configs can pick one.

=========  ==================================================================
mean_diff  mean of positive activations minus mean of negative ones
pca_diff   first principal component of the pair differences (uncentred),
           sign chosen so positives project higher, scaled to the mean
           difference's component along it; read from a streaming sketch
           (below), exact when ``hidden <= SKETCH_RANK``
probe      logistic-regression weight direction (standardised features),
           sign as above, scaled to the mean-difference norm; the one method
           that keeps the activations (``n_pairs x 2 x hidden`` floats)
mean_centred  mean of positive activations minus the mean over a generic
           corpus (``extract(..., corpus=texts)``; Jorgensen et al. 2023):
           the pairs' negatives are not used
bipo       trained, not read: per layer, the vector whose addition makes the
           positive completions likelier than the negative ones and whose
           subtraction does the reverse (`vectors.bipo`; Cao et al. 2024);
           a forward and backward pass over the pairs per epoch and layer
=========  ==================================================================

``pca_diff`` needs the second moment ``C = sum_i d_i d_i^T`` of the pair
differences. A ``d x d`` float64 matrix per layer is 4 GiB at 32 layers of
4096, so `LayerStats` keeps a Nyström sketch instead (Tropp et al. 2017,
"Fixed-rank approximation of a positive-semidefinite matrix from streaming
data"): ``Y = C @ Omega`` for a fixed seeded Gaussian ``Omega`` of
``d x SKETCH_RANK`` (2 MiB per layer at 4096). ``Y`` is a sum over pairs, so
batches, and processes under data-parallel extraction, simply add up; the top
eigenvector of ``Y (Omega^T Y)^+ Y^T`` is the direction. Where ``d <=
SKETCH_RANK``, ``Omega`` is the identity and the sketch is ``C`` itself (exact).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from steering.hooks import SteeringError

from .bipo import fit_bipo

SKETCH_RANK = 128
"""Columns of the ``pca_diff`` sketch (see module docs): ``hidden x 128`` float64 per layer."""


@functools.lru_cache(maxsize=4)
def sketch_basis(hidden_size: int, rank: int = SKETCH_RANK) -> Tensor:
    """The fixed test matrix ``Omega`` ``[hidden, min(hidden, rank)]`` (float64; read-only, shared by all layers).

    The identity where ``hidden <= rank`` (the sketch is then exact), else a
    Gaussian from a fixed seed, so every process and every run draws the same one.
    """
    if hidden_size <= rank:
        return torch.eye(hidden_size, dtype=torch.float64)
    generator = torch.Generator().manual_seed(hidden_size * 1_000_003 + rank)
    return torch.randn(hidden_size, rank, generator=generator, dtype=torch.float64)


@dataclass
class LayerStats:
    """Running statistics of one layer's activations over the pairs seen so far.

    Everything but the samples is a sum over pairs, so stats of disjoint
    shards add up (`vectors.distributed` reduces them across processes).
    """

    hidden_size: int
    keep_sketch: bool = False
    keep_samples: bool = False
    sketch_rank: int = SKETCH_RANK
    n: int = 0
    corpus_mean: Tensor | None = None
    pos_sum: Tensor = field(init=False)
    neg_sum: Tensor = field(init=False)
    sketch_basis: Tensor | None = field(init=False, default=None)
    diff_sketch: Tensor | None = field(init=False, default=None)
    pos_samples: list[Tensor] = field(init=False, default_factory=list)
    neg_samples: list[Tensor] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        # float64 accumulators: sums over thousands of pairs lose digits in float32.
        self.pos_sum = torch.zeros(self.hidden_size, dtype=torch.float64)
        self.neg_sum = torch.zeros(self.hidden_size, dtype=torch.float64)
        if self.keep_sketch:
            self.sketch_basis = sketch_basis(self.hidden_size, self.sketch_rank)
            self.diff_sketch = torch.zeros_like(self.sketch_basis)

    def update(self, pos: Tensor, neg: Tensor) -> None:
        """Add a batch of ``[batch, hidden]`` positive and negative activations."""
        pos = pos.detach().to("cpu", torch.float64)
        neg = neg.detach().to("cpu", torch.float64)
        self.n += pos.shape[0]
        self.pos_sum += pos.sum(0)
        self.neg_sum += neg.sum(0)
        if self.diff_sketch is not None:
            assert self.sketch_basis is not None
            diff = pos - neg
            self.diff_sketch += diff.T @ (diff @ self.sketch_basis)
        if self.keep_samples:
            self.pos_samples.append(pos.float())
            self.neg_samples.append(neg.float())

    @property
    def mean_diff(self) -> Tensor:
        """Mean positive minus mean negative activation (float64)."""
        return (self.pos_sum - self.neg_sum) / max(self.n, 1)

    @property
    def reference(self) -> Tensor:
        """The reference mean the direction is relative to: the corpus mean if one was read, else the negatives' mean."""
        if self.corpus_mean is not None:
            return self.corpus_mean
        return self.neg_sum / max(self.n, 1)


@dataclass(frozen=True)
class Method:
    """An extraction method: ``fn(stats) -> direction`` plus the statistics it needs.

    A trained method sets ``fit(model, tokenizer, pairs, layers, site=, progress=, options=)
    -> ({layer: direction}, metadata)`` instead: `extract` calls it with its ``options``
    (the method's settings by name) and reads no statistics (its ``fn`` refuses to run).
    """

    fn: Callable[[LayerStats], Tensor]
    needs_sketch: bool = False
    needs_samples: bool = False
    needs_corpus: bool = False
    doc: str = ""
    fit: Callable[..., tuple[dict[int, Tensor], dict[str, str]]] | None = None


def mean_diff(stats: LayerStats) -> Tensor:
    """Mean of positive minus mean of negative activations."""
    return stats.mean_diff.float()


def top_eigenvector(sketch: Tensor, basis: Tensor) -> Tensor:
    """Top eigenvector of the PSD ``C`` whose sketch is ``sketch = C @ basis`` (Nyström, see module docs)."""
    # A shift by nu keeps the core well conditioned; eigenvalues move by nu, eigenvectors do not.
    nu = float(torch.finfo(torch.float64).eps) * (sketch.shape[0] ** 0.5) * float(torch.linalg.matrix_norm(sketch, 2))
    shifted = sketch + nu * basis
    core = basis.T @ shifted
    values, vectors = torch.linalg.eigh((core + core.T) / 2)
    keep = values > values.max() * 1e-12
    # C + nu*basis-span ~ F F^T with F = shifted V diag(values)^-1/2; its top left singular vector is the answer.
    factor = shifted @ (vectors[:, keep] / values[keep].sqrt())
    left, _, _ = torch.linalg.svd(factor, full_matrices=False)
    return left[:, 0]


def pca_diff(stats: LayerStats) -> Tensor:
    """First principal component of the pair differences (see module docs)."""
    if stats.diff_sketch is None or stats.sketch_basis is None:
        raise SteeringError("pca_diff needs stats collected with keep_sketch=True")
    top = top_eigenvector(stats.diff_sketch, stats.sketch_basis)
    along = float(stats.mean_diff @ top)
    # Sign toward the positives; magnitude = the mean difference's component.
    return (top * along).float()


@dataclass(frozen=True)
class LogisticProbe:
    """A logistic regression fitted on standardised features (the one probe of the framework).

    ``decision_function(x)`` scores raw activations ``[n, hidden]`` (positive =
    the label-1 side); ``direction`` is the decision normal in the raw space.
    Used by the ``probe`` method here and by the ``probe_accuracy`` metric.
    """

    mean: np.ndarray
    scale: np.ndarray
    clf: Any

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Signed distance-like scores of raw activations ``x`` ``[n, hidden]``."""
        return self.clf.decision_function((x - self.mean) / self.scale)

    @property
    def direction(self) -> np.ndarray:
        """The decision normal in raw activation space: the standardised weight over ``scale``."""
        return self.clf.coef_[0] / self.scale


def fit_logistic(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> LogisticProbe:
    """Fit `LogisticProbe` on ``x`` ``[n, hidden]`` and binary labels ``y`` (1 = positive)."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((x - mean) / scale, y)
    return LogisticProbe(mean, scale, clf)


def probe_direction(positives: Tensor, negatives: Tensor, reference: Tensor | None = None) -> Tensor:
    """`fit_logistic`'s direction between ``positives`` ``[n, hidden]`` and ``negatives`` ``[m, hidden]`` (float64).

    ``n`` and ``m`` may differ. The sign makes the positives project higher and
    the norm is that of ``reference`` (default: the difference of the two means).

    Example:
        >>> pos = torch.tensor([[2.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
        >>> neg = torch.tensor([[0.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
        >>> d, diff = probe_direction(pos, neg), pos.mean(0) - neg.mean(0)
        >>> bool(d @ diff > 0), bool(torch.isclose(d.norm(), diff.norm()))
        (True, True)
    """
    x = torch.cat([positives, negatives]).double().numpy()
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    weight = torch.from_numpy(fit_logistic(x, y).direction)
    if reference is None:
        reference = positives.double().mean(0) - negatives.double().mean(0)
    if float(weight @ reference) < 0:
        weight = -weight
    return weight / weight.norm().clamp_min(1e-12) * reference.norm()


def probe(stats: LayerStats) -> Tensor:
    """Logistic-regression direction (see module docs)."""
    return probe_direction(torch.cat(stats.pos_samples), torch.cat(stats.neg_samples), stats.mean_diff).float()


def mean_centred(stats: LayerStats) -> Tensor:
    """Mean of positive activations minus the corpus mean (see module docs)."""
    if stats.corpus_mean is None:
        raise SteeringError("method 'mean_centred' needs a generic corpus: extract(..., corpus=texts)")
    return (stats.pos_sum / max(stats.n, 1) - stats.corpus_mean).float()


def _trained(stats: LayerStats) -> Tensor:
    raise SteeringError("this method trains on the model, it is not computed from activation statistics: use extract()")


_METHODS: dict[str, Method] = {
    "mean_diff": Method(mean_diff, doc="mean(positive) - mean(negative)"),
    "pca_diff": Method(pca_diff, needs_sketch=True, doc="first principal component of pair differences"),
    "probe": Method(probe, needs_samples=True, doc="logistic-regression weight direction"),
    "mean_centred": Method(mean_centred, needs_corpus=True, doc="mean(positive) - mean(generic corpus)"),
    "bipo": Method(_trained, fit=fit_bipo, doc="trained: +v favours the positive completions, -v the negative (BiPO)"),
}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)
"""The registered methods by name: a read-only view; add one with `register_method`."""

PairMethod = Callable[[Tensor, Tensor], Tensor]
"""The plain form of a method: ``(positives, negatives) -> direction``, both ``[n_pairs, hidden]``."""


def get_method(name: str) -> Method:
    """Look a method up by name; raise `SteeringError` listing the choices."""
    try:
        return METHODS[name]
    except KeyError:
        raise SteeringError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


def register_method(name: str, method: Method | PairMethod) -> Method:
    """Add a user-defined method to the registry (the name must be new); return it.

    Args:
        name: the name `extract` and configs select it by.
        method: either the streaming form, a `Method` whose ``fn`` reads the
            running `LayerStats` (memory does not grow with the pairs), or a
            plain callable ``(positives, negatives) -> direction`` taking the
            ``[n_pairs, hidden]`` float32 activations of one layer (rows are
            pairs, in order) and returning a ``[hidden]`` direction; it keeps
            the activations, as ``probe`` does.

    Raises:
        SteeringError: if the name is taken, or ``method`` is neither form.

    Example:
        >>> register_method("median_diff", lambda pos, neg: (pos - neg).median(0).values)  # doctest: +SKIP
        >>> vec = extract(model, tok, pairs, layers=[12], method="median_diff")  # doctest: +SKIP
    """
    if name in _METHODS:
        raise SteeringError(f"method {name!r} is already registered")
    if not isinstance(method, Method):
        if not callable(method):
            raise SteeringError(
                f"method {name!r} must be a Method or a callable (positives, negatives) -> direction, got {type(method).__name__}"
            )
        method = Method(_from_pairs(method), needs_samples=True, doc=(method.__doc__ or "").strip().split("\n")[0])
    _METHODS[name] = method
    return method


def _from_pairs(fn: PairMethod) -> Callable[[LayerStats], Tensor]:
    def from_stats(stats: LayerStats) -> Tensor:
        return fn(torch.cat(stats.pos_samples), torch.cat(stats.neg_samples)).float()

    return from_stats
