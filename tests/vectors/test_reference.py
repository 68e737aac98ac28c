"""Reference means (affine editing) and the mean_centred method, against per-text numpy references."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from tiny_models import make_tiny

import steering as st
from steering.vectors import FORMAT_VERSION, VectorFileError
from steering.vectors.text import pair_texts, tokenize

PAIRS = [("I love this so much", "I hate this so much"), ("great happy day", "awful sad day"), ("wonderful news", "terrible news")]
CORPUS = ["The train leaves at noon.", "Water boils at one hundred degrees.", "A map of the town", "Numbers and letters"]
LAYERS = [0, 2]


def _last_token(model, tok, text: str, special: bool, layer: int) -> np.ndarray:
    """Reference read: the text alone, no padding, its last token's hidden state."""
    ids = torch.tensor([tokenize(tok, text, special)])
    with st.record(model, layers=[layer]) as rec:
        model(input_ids=ids)
    return rec[layer][0, -1].double().numpy()


@torch.no_grad()
def test_mean_centred_and_reference_match_numpy() -> None:
    model, tok = make_tiny("llama")
    pairs = st.vectors.as_pairs(PAIRS)
    vec = st.extract(model, tok, PAIRS, layers=LAYERS, method="mean_centred", corpus=CORPUS)
    paired = st.extract(model, tok, PAIRS, layers=LAYERS, reference=True)
    for layer in LAYERS:
        texts = [pair_texts(tok, p) for p in pairs]
        pos = np.mean([_last_token(model, tok, t[0], t[3], layer) for t in texts], 0)
        neg = np.mean([_last_token(model, tok, t[1], t[3], layer) for t in texts], 0)
        corpus = np.mean([_last_token(model, tok, c, True, layer) for c in CORPUS], 0)
        np.testing.assert_allclose(vec.directions[layer].numpy(), pos - corpus, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(vec.reference[layer].numpy(), corpus, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(paired.reference[layer].numpy(), neg, atol=1e-4, rtol=1e-4)
    assert vec.method == "mean_centred"
    assert st.extract(model, tok, PAIRS, layers=LAYERS).reference is None  # opt-in for the paired methods


def test_corpus_errors() -> None:
    model, tok = make_tiny("llama")
    with pytest.raises(st.SteeringError, match="needs a generic corpus"):
        st.extract(model, tok, PAIRS, layers=[0], method="mean_centred")
    with pytest.raises(st.SteeringError, match="corpus= is for method='mean_centred'"):
        st.extract(model, tok, PAIRS, layers=[0], corpus=CORPUS)
    with pytest.raises(st.SteeringError, match="no non-empty texts"):
        st.extract(model, tok, PAIRS, layers=[0], method="mean_centred", corpus=["  "])


def test_reference_round_trip_and_versions(tmp_path) -> None:
    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=LAYERS, reference=True)
    path = vec.save(tmp_path / "v.safetensors")
    back = st.SteeringVector.load(path, model)
    for layer in LAYERS:
        assert torch.equal(back.reference[layer], vec.reference[layer])
        assert torch.equal(back.directions[layer], vec.directions[layer])
    assert _header(path)["__metadata__"]["format_version"] == str(FORMAT_VERSION) == "2"
    plain = st.extract(model, tok, PAIRS, layers=LAYERS).save(tmp_path / "p.safetensors")
    assert _header(plain)["__metadata__"]["format_version"] == "1"  # old readers still read files without one


def test_reference_file_errors(tmp_path) -> None:
    from safetensors.torch import save_file

    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=LAYERS, reference=True)
    meta = {**vec.metadata(), "format": "steering-vector", "format_version": "1", "steering_version": "0"}
    tensors = {f"layers.{i}": t for i, t in vec.directions.items()} | {"reference.0": vec.reference[0]}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=meta)
    with pytest.raises(VectorFileError, match="unexpected tensor 'reference.0'"):
        st.SteeringVector.load(tmp_path / "v1.safetensors")
    save_file(tensors, str(tmp_path / "v2.safetensors"), metadata={**meta, "format_version": "2"})
    with pytest.raises(VectorFileError, match=r"layers \[0\] do not match the directions' layers \[0, 2\]"):
        st.SteeringVector.load(tmp_path / "v2.safetensors")


def test_reference_through_algebra() -> None:
    model, tok = make_tiny("llama")
    vec = st.extract(model, tok, PAIRS, layers=LAYERS, reference=True)
    for derived in (-vec, 2 * vec, vec.normalized(), vec.select([2])):
        for layer in derived.layers:
            assert torch.equal(derived.reference[layer], vec.reference[layer])  # a point, not a direction
    other = st.extract(model, tok, PAIRS[:2], layers=LAYERS, reference=True)
    assert (vec + other).reference is None  # two references: the sum has no one mean
    assert (vec + vec).reference is not None


def _header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])
