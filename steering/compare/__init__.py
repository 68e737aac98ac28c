"""Compare behaviour vectors: similarity, separation, analogies, interpolation, profiles.

Every function returns plain data (numpy arrays, dicts, lists); plots are in
`steering.plots` and the HTML report in ``experiments/compare_report.py``.

- `similarity`: cosine between vectors at each layer, a vector's layer x
  layer self-similarity, norms; `CrossModelError` for vectors of different models.
- `activations`: labelled activations from contrastive pairs or labelled texts.
- `projection`: projections onto vectors, AUROC per layer, 2-D PCA / t-SNE.
- `analogies`: ``a - b + c`` nearest to ``d``?
- `interpolation`: steer with ``(1 - t) a + t b`` and score the generations.
- `profiles`: behaviour profiles, the cross-model comparison.
- `pipeline`: `compare_vectors`, all of the above for one set of vectors.

Example:
    >>> from steering import compare as sc
    >>> vecs = {"sentiment": s, "formality": f}  # doctest: +SKIP
    >>> sc.cosine_matrix(vecs, layer=12)  # doctest: +SKIP
    >>> acts = sc.pair_activations(model, tok, load_pairs("sentiment"), layers=range(30))  # doctest: +SKIP
    >>> sc.separation(vecs, acts)["sentiment"]  # AUROC per layer  # doctest: +SKIP
"""

from ..scoring import Scorer, sentiment_scorer  # re-exported: interpolate's scorers
from .activations import LabelledActivations, is_labelled_texts, pair_activations, read_labelled_texts, text_activations, text_features
from .analogies import analogy, analogy_check
from .interpolation import interpolate, projection_scorer
from .pipeline import compare_vectors, spread_layers, to_jsonable
from .profiles import BehaviourProfile, Measurement, ProfileError, compare_profiles, load_profiles, merge_measurements
from .projection import auroc, best_layers, embed_2d, in_sample, project, projections, separation
from .similarity import (
    CrossModelError,
    check_same_space,
    cosine_matrices,
    cosine_matrix,
    layer_similarity,
    layer_union,
    norms,
    pairwise_cosine,
)

__all__ = [
    "BehaviourProfile",
    "CrossModelError",
    "LabelledActivations",
    "Measurement",
    "ProfileError",
    "Scorer",
    "analogy",
    "analogy_check",
    "auroc",
    "best_layers",
    "check_same_space",
    "compare_profiles",
    "compare_vectors",
    "cosine_matrices",
    "cosine_matrix",
    "embed_2d",
    "in_sample",
    "interpolate",
    "is_labelled_texts",
    "layer_similarity",
    "layer_union",
    "load_profiles",
    "merge_measurements",
    "norms",
    "pair_activations",
    "pairwise_cosine",
    "project",
    "projection_scorer",
    "projections",
    "read_labelled_texts",
    "sentiment_scorer",
    "separation",
    "spread_layers",
    "text_activations",
    "text_features",
    "to_jsonable",
]
