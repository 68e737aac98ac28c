"""The comparison report on the real SmolLM2 with the bundled behaviour sets (short version of scripts/compare_demo.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import steering as st
from steering import compare as sc
from steering.experiments.compare import write_numbers, write_plots
from steering.experiments.compare_report import write_report

pytestmark = pytest.mark.slow

LAYERS = [4, 8, 12, 16, 20]
N_TRAIN, N_TEST = 32, 24


def test_report_on_smollm2_shows_behaviours_layers_and_sentiment_auroc(smollm2, tmp_path: Path) -> None:
    model, tok = smollm2
    vectors, files = {}, {}
    for name in ("sentiment", "formality", "refusal", "truthfulness", "confidence"):
        pairs = st.load_pairs(name)[:N_TRAIN]
        vec = st.extract(model, tok, pairs, layers=LAYERS)
        files[name] = vec.save(tmp_path / f"{name}.safetensors")
        vectors[name] = st.SteeringVector.load(files[name], model)
    held_out = st.load_pairs("sentiment")[-N_TEST:]  # not among the first N_TRAIN of 200
    acts = sc.pair_activations(model, tok, held_out, LAYERS, source="sentiment (held out)")
    res = sc.compare_vectors(vectors, activations=acts, embed=("pca",))

    # Cosines are numpy's on the saved tensors.
    raw = {n: load_file(str(p)) for n, p in files.items()}
    x, y = raw["sentiment"]["layers.12"].astype(np.float64), raw["refusal"]["layers.12"].astype(np.float64)
    assert res["cosine"][12][0, 2] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-6)
    # The sentiment direction separates held-out sentiment pairs well in the middle layers.
    assert res["in_sample"]["sentiment"] is False
    assert max(res["separation"]["sentiment"].values()) > 0.9
    assert res["separation"]["sentiment"][12] > 0.9

    out = tmp_path / "report"
    out.mkdir()
    data_files = write_numbers(out, res)
    figures = write_plots(out, res)
    html = write_report(out, res, figures, data_files).read_text()
    for name in vectors:
        assert f"<td class='l'>{name}</td>" in html
    header = re.search(r"<th class='l'>pair \\ layer</th>(.*?)</tr>", html)
    assert header is not None and re.findall(r"<th>(\d+)</th>", header.group(1)) == [str(i) for i in LAYERS]
    assert "<img src='auroc.png'" in html and (out / "auroc.png").read_bytes()[:4] == b"\x89PNG"
    assert all((out / ref).is_file() for ref in re.findall(r"(?:src|href)='([^']+)'", html))
