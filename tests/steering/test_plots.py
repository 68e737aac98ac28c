"""Plots: PNG files written without touching matplotlib's global state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")


def test_plots_leave_the_global_backend_and_pyplot_alone(tmp_path: Path) -> None:
    """A library must not switch the caller's backend (say, an interactive one in a notebook)."""
    import matplotlib.pyplot as plt

    from steering import plots

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for the caller's own choice
    try:
        path = plots.auroc_curves({"up": {0: 0.5, 1: 0.9}}, tmp_path / "auroc.png")
        plots.cosine_heatmaps({0: np.eye(2), 1: np.eye(2)}, ["a", "b"], tmp_path / "cos.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []  # nothing registered with pyplot
        assert path.read_bytes().startswith(b"\x89PNG")
    finally:
        matplotlib.use(previous)
