"""Labelled activations, projections, AUROC per layer and 2-D embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

import steering as st
from steering import compare as sc
from steering.vectors import DatasetError, SteeringVector

PAIRS = [
    ("I love this happy day", "I hate this sad day"),
    ("great wonderful fun", "awful terrible boring"),
    ("joy and smiles everywhere", "tears and pain everywhere"),
    ("so glad", "so upset"),
    ("what a lovely gift", "what a horrid gift"),
    ("a bright cheerful morning", "a bleak gloomy morning"),
]


# ------------------------------------------------------------------ numbers
def test_auroc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        assert sc.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert sc.auroc(-scores, labels) == pytest.approx(1 - sc.auroc(scores, labels), abs=1e-12)
    assert sc.auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1])) == 1.0
    assert sc.auroc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert np.isnan(sc.auroc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_project_is_length_along_unit_direction() -> None:
    x = np.random.default_rng(1).normal(size=(5, 8))
    d = np.random.default_rng(2).normal(size=8)
    np.testing.assert_allclose(sc.project(x, d), x @ d / np.linalg.norm(d))
    np.testing.assert_allclose(sc.project(x, 7 * d), sc.project(x, d))
    with pytest.raises(st.SteeringError, match="zero direction"):
        sc.project(x, np.zeros(8))


def synthetic(seed: int = 0, n: int = 30, d: int = 16):
    """Activations whose positives sit at +k*u at layer k (k = 1, 2), negatives at -k*u."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    labels = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
    sign = np.where(labels == 1, 1.0, -1.0)[:, None]
    feats = {k: (rng.normal(size=(2 * n, d)) * 0.3 + k * sign * u).astype(np.float32) for k in (1, 2)}
    acts = sc.LabelledActivations(feats, labels, np.r_[np.arange(n), np.arange(n)], "synthetic", "h" * 64)
    good = SteeringVector(
        {1: torch.tensor(u, dtype=torch.float32), 2: torch.tensor(u, dtype=torch.float32)},
        hidden_size=d,
        num_layers=3,
        dataset_sha256="h" * 64,
    )
    other = SteeringVector({2: torch.tensor(rng.normal(size=d), dtype=torch.float32)}, hidden_size=d, num_layers=3)
    return acts, {"good": good, "flipped": -good, "other": other}


def test_separation_matches_manual_auroc_and_orientation() -> None:
    acts, vectors = synthetic()
    sep = sc.separation(vectors, acts)
    assert sep["good"] == {1: 1.0, 2: 1.0} and sep["flipped"] == {1: 0.0, 2: 0.0}
    assert list(sep["other"]) == [2]
    manual = roc_auc_score(acts.labels, acts.features[2] @ vectors["other"].directions[2].numpy())
    assert sep["other"][2] == pytest.approx(manual, abs=1e-9)
    assert sc.best_layers(sep)["good"] == (1, 1.0)  # ties go to the earlier layer
    assert sc.in_sample(vectors, acts) == {"good": True, "flipped": True, "other": False}
    proj = sc.projections(vectors, acts, 1)
    assert sorted(proj) == ["flipped", "good"]
    np.testing.assert_allclose(proj["flipped"], -proj["good"])
    with pytest.raises(st.SteeringError, match=r"no activations at layer 0 \(have \[1, 2\]\)"):
        sc.projections(vectors, acts, 0)


def test_labelled_activations_validate_shapes() -> None:
    with pytest.raises(st.SteeringError, match="do not match 3 labels"):
        sc.LabelledActivations({0: np.zeros((2, 4))}, np.array([0, 1, 1]), np.arange(3))
    with pytest.raises(st.SteeringError, match="labels must be 0 or 1"):
        sc.LabelledActivations({0: np.zeros((2, 4))}, np.array([0, 2]), np.arange(2))


def test_embed_2d_pca_matches_sklearn_and_tsne_is_seeded() -> None:
    x = np.random.default_rng(3).normal(size=(20, 10))
    np.testing.assert_allclose(sc.embed_2d(x, "pca"), PCA(n_components=2).fit_transform(x), atol=1e-10)
    a, b = sc.embed_2d(x, "tsne", seed=1), sc.embed_2d(x, "tsne", seed=1)
    assert a.shape == (20, 2) and np.allclose(a, b)
    with pytest.raises(st.SteeringError, match="unknown embedding 'umap'"):
        sc.embed_2d(x, "umap")
    with pytest.raises(st.SteeringError, match="at least 3 examples"):
        sc.embed_2d(x[:2], "pca")


# ------------------------------------------------------------- activations
def test_pair_activations_are_what_extraction_reads(llama) -> None:
    """Mean positive minus mean negative of the activations == the extracted mean_diff vector."""
    model, tok = llama
    acts = sc.pair_activations(model, tok, PAIRS, layers=None, batch_size=4)
    vec = st.extract(model, tok, PAIRS, layers=None, batch_size=4)
    assert acts.layers == [0, 1, 2] and acts.features[0].shape == (12, 32)
    assert acts.dataset_sha256 == vec.dataset_sha256
    for layer in acts.layers:
        x = acts.features[layer].astype(np.float64)
        diff = x[acts.labels == 1].mean(0) - x[acts.labels == 0].mean(0)
        np.testing.assert_allclose(diff, vec.directions[layer].numpy(), rtol=1e-4, atol=1e-5)
    # Both rows of a pair share a group, and positives pair with their own negatives.
    pos, neg = acts.groups[acts.labels == 1], acts.groups[acts.labels == 0]
    np.testing.assert_array_equal(pos, neg)


@pytest.mark.parametrize("share_prefix_order", [True, False])
def test_pair_activation_rows_map_back_to_their_pair(llama, share_prefix_order: bool) -> None:
    """Batches run length-sorted, but row k (positive) and n + k (negative) are pair k, labelled k."""
    model, tok = llama
    pairs = [(f"{p} {'and more words ' * (5 - k)}", n) for k, (p, n) in enumerate(PAIRS)]  # longest first
    position = "last" if share_prefix_order else "mean"  # the two sort orders collect_stats uses
    acts = sc.pair_activations(model, tok, pairs, layers=[1], batch_size=2, read=position)
    n = len(pairs)
    np.testing.assert_array_equal(acts.groups, np.r_[np.arange(n), np.arange(n)])
    for k, pair in enumerate(pairs):
        alone = sc.pair_activations(model, tok, [pair], layers=[1], read=position)
        np.testing.assert_allclose(acts.features[1][k], alone.features[1][0], atol=1e-4)
        np.testing.assert_allclose(acts.features[1][n + k], alone.features[1][1], atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_text_activations_match_hidden_states(llama, side: str) -> None:
    model, tok = llama
    tok.padding_side = side
    texts, labels = ["the cat sat on the mat", "a dog", "birds sing in the early morning light"], [1, 0, 1]
    # Not the last layer: HF's final hidden_states entry has the final norm applied.
    last = sc.text_activations(model, tok, texts, labels, [0, 1], batch_size=2)
    mean = sc.text_activations(model, tok, texts, labels, [1], read="mean", batch_size=3)
    np.testing.assert_array_equal(last.labels, labels)
    for k, text in enumerate(texts):
        hidden = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        for layer in (0, 1):
            np.testing.assert_allclose(last.features[layer][k], hidden[layer + 1][0, -1].numpy(), atol=1e-5)
        np.testing.assert_allclose(mean.features[1][k], hidden[2][0].mean(0).numpy(), atol=1e-5)


def test_read_labelled_texts(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "good", "label": 1}\n\n{"text": "bad", "label": false}\n')
    assert sc.read_labelled_texts(path) == (["good", "bad"], [1, 0])
    assert sc.is_labelled_texts(path)
    for body, message in [
        ('{"text": "x", "label": 2}\n', r"t.jsonl:1: field 'label' must be 0, 1"),
        ('{"text": "x", "label": 1}\n{"label": 0}\n', r"t.jsonl:2: expected an object with a non-empty string field 'text'"),
        ('{"text": "x", "label": 1}\nnot json\n', r"t.jsonl:2: invalid JSON"),
        ('{"text": "x", "label": 1}\n', "all labels are 1"),
    ]:
        path.write_text(body)
        with pytest.raises(DatasetError, match=message):
            sc.read_labelled_texts(path)
    path.write_text(json.dumps({"positive": "a", "negative": "b"}) + "\n")
    assert not sc.is_labelled_texts(path)
