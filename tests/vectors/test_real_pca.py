"""pca_diff's sketch against the exact PCA on SmolLM2 and every bundled data set (hidden 576 > rank 128)."""

from __future__ import annotations

import pytest
import torch

import steering as st
from steering.vectors import METHODS, collect_stats

pytestmark = pytest.mark.slow

LAYERS = [5, 10, 15, 20]


@pytest.mark.parametrize("name", st.bundled_datasets())
def test_sketched_pca_diff_is_the_exact_pca(smollm2, name: str) -> None:
    model, tok = smollm2
    pairs = st.load_pairs(name)
    # One pass keeps both the sketch (what pca_diff reads) and the activations (the exact reference).
    stats = collect_stats(model, tok, pairs, LAYERS, needs_sketch=True, needs_samples=True, progress=False)
    for layer, s in stats.items():
        assert s.diff_sketch is not None and s.diff_sketch.shape == (576, 128)
        diffs = (s.pos_samples[0] - s.neg_samples[0]).double()
        _, vecs = torch.linalg.eigh(diffs.T @ diffs / len(pairs))
        exact = vecs[:, -1] * float(diffs.mean(0) @ vecs[:, -1])  # sign and size as pca_diff defines them
        sketched = METHODS["pca_diff"].fn(s).double()
        assert float(torch.nn.functional.cosine_similarity(sketched, exact, dim=0)) >= 0.999, (name, layer)
        assert float(sketched.norm()) == pytest.approx(float(exact.norm()), rel=1e-3)
