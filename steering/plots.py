"""PNG plots of comparison numbers (matplotlib, Agg canvas, no display needed).

Each function takes plain numbers, as returned by `steering.compare`, and a
path; it writes one PNG atomically and returns the path. Nothing here
computes a number the report relies on, so the numbers stay testable without
matplotlib (an optional dependency: ``pip install 'steering[plots]'``).

Figures are ``matplotlib.figure.Figure`` objects drawn on their own
``FigureCanvasAgg``: nothing goes through ``pyplot``, so matplotlib's global
backend and pyplot's figure list are left as the caller has them.

Plotting is split in two, by what is plotted: this module draws the
library's own results (`steering.compare`), for library users too;
``experiments/plots.py`` draws a run's sweep cells (``experiments.results``
types, which the library may not import). Both draw on `new_figure` and save
with `save_figure`, so the figure mechanics are written once, here.

Conventions: cosines use a diverging map fixed to [-1, 1] (red = same
direction, blue = opposite, grey = undefined); label 1 (shows the behaviour)
is green and label 0 orange throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steering.hooks import SteeringError
from steering.vectors import atomic_write

POSITIVE, NEGATIVE = "#1b9e77", "#d95f02"
_DPI = 110


class _Figures:
    """The few pyplot calls used here, on plain `Figure` objects (no global state)."""

    def __init__(self) -> None:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._colormaps = matplotlib.colormaps
        self._figure, self._canvas = Figure, FigureCanvasAgg

    def figure(self, **kw: Any) -> Any:
        fig = self._figure(**kw)
        self._canvas(fig)  # files only: an Agg canvas of its own, never a window
        return fig

    def subplots(
        self, nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, layout: str | None = None, **kw: Any
    ) -> tuple[Any, Any]:
        fig = self.figure(figsize=figsize, layout=layout)
        return fig, fig.subplots(nrows, ncols, **kw)

    def get_cmap(self, name: str) -> Any:
        return self._colormaps[name]


def _plt() -> _Figures:
    try:
        return _Figures()
    except ImportError:
        raise SteeringError("plots need matplotlib: pip install 'steering[plots]' (or pass plots=false)") from None


def new_figure(width: float, height: float) -> Any:
    """A ``Figure`` of ``width`` x ``height`` inches on its own Agg canvas (constrained layout, no pyplot)."""
    return _plt().figure(figsize=(width, height), layout="constrained", dpi=_DPI)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (the figure is not registered anywhere: nothing to close)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI), suffix=".png.tmp")


def _grid(plt: Any, n: int, *, ncols: int = 4, size: tuple[float, float] = (3.4, 3.0)) -> tuple[Any, list[Any]]:
    cols = max(1, min(ncols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols + 0.8, size[1] * rows + 0.6), squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _ticks(ax: Any, labels: Sequence[Any], axis: str = "both", max_ticks: int = 12) -> None:
    step = max(1, math.ceil(len(labels) / max_ticks))
    positions = list(range(0, len(labels), step))
    if axis in ("x", "both"):
        ax.set_xticks(
            positions,
            [str(labels[p]) for p in positions],
            rotation=45 if isinstance(labels[0], str) else 0,
            ha="right" if isinstance(labels[0], str) else "center",
        )
    if axis in ("y", "both"):
        ax.set_yticks(positions, [str(labels[p]) for p in positions])


def _cosine_image(plt: Any, ax: Any, matrix: np.ndarray) -> Any:
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#d9d9d9")
    return ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1, vmax=1)


def cosine_heatmaps(cosine: Mapping[int, np.ndarray], names: Sequence[str], path: str | Path, *, max_panels: int = 8) -> Path:
    """One heatmap of vector x vector cosine per layer (at most ``max_panels``, spread over the layers)."""
    plt = _plt()
    layers = sorted(cosine)
    if not layers:
        raise SteeringError("no cosine matrices to plot")
    if len(layers) > max_panels:
        layers = [layers[round(k * (len(layers) - 1) / (max_panels - 1))] for k in range(max_panels)]
    fig, axes = _grid(plt, len(layers), size=(3.2 + 0.25 * len(names), 2.9 + 0.25 * len(names)))
    image = None
    for ax, layer in zip(axes, layers):
        matrix = cosine[layer]
        image = _cosine_image(plt, ax, matrix)
        _ticks(ax, list(names))
        ax.set_title(f"layer {layer}")
        if len(names) <= 10:
            for i in range(len(names)):
                for j in range(len(names)):
                    if not np.isnan(matrix[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{matrix[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if abs(matrix[i, j]) > 0.6 else "black",
                        )
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    fig.suptitle("Cosine similarity between vectors")
    return save_figure(fig, path)


def cosine_over_layers(cosine: Mapping[int, np.ndarray], names: Sequence[str], path: str | Path, *, max_pairs: int = 15) -> Path:
    """Cosine of each pair of vectors against layer (pairs with the largest |cosine| first)."""
    plt = _plt()
    layers = sorted(cosine)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    if not layers or not pairs:
        raise SteeringError("need at least two vectors and one shared layer")
    strength = {p: np.nanmax(np.abs([cosine[layer][p] for layer in layers] + [0.0])) for p in pairs}
    pairs = sorted(pairs, key=lambda p: -strength[p])[:max_pairs]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    colors = plt.get_cmap("tab20").colors if len(pairs) > 10 else plt.get_cmap("tab10").colors
    for k, (i, j) in enumerate(pairs):
        # tab20 alternates dark/light shades; a second line style keeps neighbours apart.
        style = "-" if k % 2 == 0 else "--"
        ax.plot(
            layers,
            [cosine[layer][i, j] for layer in layers],
            style,
            marker="o",
            ms=3,
            color=colors[k % len(colors)],
            label=f"{names[i]} / {names[j]}",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="layer", ylabel="cosine", ylim=(-1.05, 1.05), title="Cosine between vectors across layers")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def layer_similarity_heatmaps(layer_sim: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """One layer x layer self-cosine heatmap per vector."""
    plt = _plt()
    names = [n for n, d in layer_sim.items() if len(d["layers"]) >= 1]
    if not names:
        raise SteeringError("no vectors to plot")
    fig, axes = _grid(plt, len(names), ncols=3, size=(3.6, 3.3))
    image = None
    for ax, name in zip(axes, names):
        image = _cosine_image(plt, ax, layer_sim[name]["matrix"])
        _ticks(ax, layer_sim[name]["layers"])
        ax.set(title=name, xlabel="layer", ylabel="layer")
    fig.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    fig.suptitle("Direction stability through depth (layer x layer cosine)")
    return save_figure(fig, path)


def norm_curves(norms: Mapping[str, Mapping[int, float]], path: str | Path) -> Path:
    """Norm of each vector's direction against layer."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.0), layout="constrained")
    for name, by_layer in norms.items():
        layers = sorted(by_layer)
        ax.plot(layers, [by_layer[i] for i in layers], marker="o", ms=3, label=name)
    ax.set(xlabel="layer", ylabel="L2 norm", title="Vector norm per layer")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def auroc_curves(
    separation: Mapping[str, Mapping[int, float]],
    path: str | Path,
    *,
    in_sample: Mapping[str, bool] | None = None,
    source: str = "",
) -> Path:
    """AUROC of each vector's projection against layer, with its best layer marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    for name, by_layer in separation.items():
        layers = [i for i in sorted(by_layer) if not np.isnan(by_layer[i])]
        if not layers:
            continue
        values = [by_layer[i] for i in layers]
        label = name + (" (in-sample)" if in_sample and in_sample.get(name) else "")
        (line,) = ax.plot(layers, values, marker="o", ms=3, label=label)
        best = int(np.argmax(values))
        ax.scatter([layers[best]], [values[best]], s=60, facecolors="none", edgecolors=line.get_color(), zorder=3)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(
        xlabel="layer",
        ylabel="AUROC",
        ylim=(-0.02, 1.02),
        title="Separation of positive vs negative by projection" + (f" ({source})" if source else ""),
    )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path)


def _legend_labels(ax: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=t) for c, t in ((POSITIVE, "positive (1)"), (NEGATIVE, "negative (0)"))]
    ax.legend(handles=handles, fontsize=7, loc="best")


def scatter_2d(embeddings: Mapping[int, np.ndarray], labels: np.ndarray, path: str | Path, *, method: str) -> Path:
    """2-D embedding of activations at each layer, coloured by label."""
    plt = _plt()
    layers = sorted(embeddings)
    fig, axes = _grid(plt, len(layers), ncols=3, size=(3.6, 3.4))
    labels = np.asarray(labels)
    for ax, layer in zip(axes, layers):
        xy = embeddings[layer]
        for value, color in ((0, NEGATIVE), (1, POSITIVE)):
            ax.scatter(xy[labels == value, 0], xy[labels == value, 1], s=9, alpha=0.7, color=color, linewidths=0)
        ax.set(title=f"layer {layer}", xticks=[], yticks=[])
        _legend_labels(ax)
    fig.suptitle(f"Activations in 2-D ({'PCA' if method == 'pca' else 't-SNE'})")
    return save_figure(fig, path)


def projection_histograms(projections: Mapping[int, Mapping[str, np.ndarray]], labels: np.ndarray, path: str | Path) -> Path:
    """Histogram of projections onto each vector (rows) at each layer (columns), by label."""
    plt = _plt()
    layers = sorted(projections)
    names = list(dict.fromkeys(n for layer in layers for n in projections[layer]))
    fig, axes = plt.subplots(
        len(names), len(layers), figsize=(3.2 * len(layers) + 0.6, 2.2 * len(names) + 0.8), squeeze=False, layout="constrained"
    )
    labels = np.asarray(labels)
    for r, name in enumerate(names):
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            if name not in projections[layer]:
                ax.set_visible(False)
                continue
            scores = projections[layer][name]
            bins = np.histogram_bin_edges(scores, bins=24)
            ax.hist(scores[labels == 0], bins=bins, alpha=0.6, color=NEGATIVE)
            ax.hist(scores[labels == 1], bins=bins, alpha=0.6, color=POSITIVE)
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}")
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    _legend_labels(axes[0][0])
    fig.suptitle("Projections onto each vector (x: projection on the unit direction)")
    return save_figure(fig, path)


def interpolation_curves(result: Mapping[str, Any], path: str | Path, *, a: str, b: str) -> Path:
    """Mean score (with one standard deviation) of the generations against ``t``."""
    plt = _plt()
    names = list(result["scores"])
    fig, axes = _grid(plt, len(names), ncols=3, size=(3.8, 3.0))
    ts = np.asarray(result["ts"])
    for ax, name in zip(axes, names):
        mean, std = np.asarray(result["scores"][name]), np.asarray(result["stds"][name])
        ax.plot(ts, mean, marker="o")
        ax.fill_between(ts, mean - std, mean + std, alpha=0.2)
        ax.set(xlabel=f"t  (0 = {a}, 1 = {b})", ylabel=name)
    layers = result.get("layers") or []
    where = f" at layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}" if layers else ""
    fig.suptitle(f"Steering with (1 - t) {a} + t {b}, coef {result['coef']:g}{where}")
    return save_figure(fig, path)


def profile_heatmaps(result: Mapping[str, Any], path: str | Path) -> Path:
    """Effect per behaviour and model, and the models' profile correlation."""
    plt = _plt()
    models, behaviours, effects = result["models"], result["behaviours"], np.asarray(result["effects"])
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(4 + 0.5 * len(behaviours) + 0.5 * len(models), 1.5 + 0.5 * len(models)), layout="constrained"
    )
    limit = float(np.nanmax(np.abs(effects))) if np.isfinite(effects).any() else 1.0
    cmap = plt.get_cmap("PuOr_r").with_extremes(bad="#d9d9d9")
    image = left.imshow(np.ma.masked_invalid(effects), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
    left.set_xticks(range(len(behaviours)), behaviours, rotation=45, ha="right")
    left.set_yticks(range(len(models)), models)
    left.set_title("effect per behaviour")
    fig.colorbar(image, ax=left, shrink=0.8)
    corr = _cosine_image(plt, right, np.asarray(result["pearson"]))
    right.set_xticks(range(len(models)), models, rotation=45, ha="right")
    right.set_yticks(range(len(models)), models)
    right.set_title("profile correlation (Pearson)")
    fig.colorbar(corr, ax=right, shrink=0.8)
    return save_figure(fig, path)
