"""The run's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Here rather than in `steering.plots` because they plot ``experiments.results``
types (sweep cells), which the library may not import; the figure mechanics
(`steering.plots.new_figure`, `save_figure`) are the library's.

Sweep figures: the effect against the coefficient (one line per layer
window), a layer x coefficient heatmap of the effect, and the side effects
against the effect. Cells over the side-effect budget are drawn hollow (lines,
scatter) or hatched (heatmap); the chosen cells carry a star, the prompting
baseline a "P". The Pareto figure puts every cell at (budget use, change of
the effect) per direction, joins the front, and marks the prompting cells;
the per-example figure shows, for the chosen and the prompting cells, how
the per-prompt change of the effect is spread. A/B runs add
the unsteered letter balance and the per-row steerability; probe runs plot
probe accuracy and AUROC against the layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steering.plots import new_figure, save_figure

from .results import AXES, CellResult, axis_label


def _chosen(choices: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, float], str]:
    """(row label, grid coef) -> direction, for the chosen cells."""
    out = {}
    for direction, choice in choices.items():
        if choice.get("best_layer") is not None:
            out[(choice["window"], choice["grid_coef"])] = direction
    return out


def _rows(cells: Sequence[CellResult]) -> list[str]:
    return list(dict.fromkeys(c.label for c in cells))


def effect_vs_coef(
    path: Path,
    baseline: CellResult,
    cells: Sequence[CellResult],
    effect: str,
    budget: Mapping[str, float],
    choices: Mapping[str, Any],
    floor: float = 0.0,
) -> Path:
    """The effect against the grid coefficient: one line per layer window, one panel per window size.

    The y axis spans at least ``floor`` either side of the unsteered value, so a
    flat behaviour looks flat rather than filling the axes with noise.
    """
    from matplotlib import colormaps

    sizes = sorted({len(c.layers) for c in cells})
    fig = new_figure(min(5.2 * len(sizes), 11.0) + 0.6, 4.2)
    axes = fig.subplots(1, len(sizes), squeeze=False, sharey=True)[0]
    base = baseline.values.get(effect, math.nan)
    chosen = _chosen(choices)
    for ax, size in zip(axes, sizes):
        labels = _rows([c for c in cells if len(c.layers) == size])
        for k, label in enumerate(labels):
            row = sorted([c for c in cells if c.label == label] + [baseline], key=lambda c: c.coef)
            colour = colormaps["plasma"](0.85 * k / max(len(labels) - 1, 1))
            xs = [c.coef for c in row]
            ys = [c.values.get(effect, math.nan) for c in row]
            ax.plot(xs, ys, "-", color=colour, lw=1.6, label=f"layer {label}")
            for c, x, y in zip(row, xs, ys):
                ax.plot(x, y, "o", ms=6, color=colour, mfc=colour if c.within(budget) else "white", mew=1.5)
                if (c.label, c.coef) in chosen:
                    ax.plot(x, y, "*", ms=17, color="black", mfc="gold", zorder=5)
        ax.axhline(base, color="grey", ls=":", lw=1, label="unsteered")
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("coefficient" + (" (total over the window)" if size > 1 else ""))
        ax.set_title("single layers" if size == 1 else f"windows of {size} layers", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel(effect)
    if floor > 0 and math.isfinite(base):
        low, high = axes[0].get_ylim()
        axes[0].set_ylim(min(low, base - floor), max(high, base + floor))
    fig.suptitle(f"{effect} against coefficient (hollow: over budget, star: chosen)", fontsize=10)
    return save_figure(fig, path)


def heatmap(
    path: Path,
    baseline: CellResult,
    cells: Sequence[CellResult],
    effect: str,
    budget: Mapping[str, float],
    choices: Mapping[str, Any],
    floor: float = 0.0,
) -> Path:
    """Layer window x coefficient grid of the effect; hatched cells are over budget.

    Colours span at least ``floor`` either side of the unsteered value (see `effect_vs_coef`).
    """
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    labels = _rows(cells)
    coefs = sorted({c.coef for c in cells} | {0.0})
    grid = np.full((len(labels), len(coefs)), np.nan)
    lookup: dict[tuple[str, float], CellResult] = {(c.label, c.coef): c for c in cells}
    for i, label in enumerate(labels):
        for j, coef in enumerate(coefs):
            cell = baseline if coef == 0.0 else lookup.get((label, coef))
            if cell is not None:
                grid[i, j] = cell.values.get(effect, np.nan)
    base = baseline.values.get(effect, np.nan)
    finite = grid[np.isfinite(grid)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    centre = base if math.isfinite(base) and low < base < high else (low + high) / 2
    reach = max(floor, 1e-9)
    norm = TwoSlopeNorm(vcenter=centre, vmin=min(low, centre - reach), vmax=max(high, centre + reach))
    fig = new_figure(1.3 + 0.85 * len(coefs), 1.3 + 0.45 * len(labels))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="coolwarm", norm=norm, aspect="auto")
    chosen = _chosen(choices)
    for i, label in enumerate(labels):
        for j, coef in enumerate(coefs):
            if not np.isfinite(grid[i, j]):
                continue
            cell = baseline if coef == 0.0 else lookup[(label, coef)]
            inside = cell.within(budget)
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="black" if inside else "dimgray")
            if not inside:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="dimgray", lw=0))
            if (label, coef) in chosen:
                ax.add_patch(Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="black", lw=2.2))
    ax.set_xticks(range(len(coefs)), [f"{c:+g}" if c else "0" for c in coefs])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("coefficient")
    ax.set_ylabel("layer (window)")
    ax.set_title(f"{effect}: hatched = over budget, boxed = chosen", fontsize=10)
    fig.colorbar(image, ax=ax, label=effect, shrink=0.9)
    return save_figure(fig, path)


def side_effects(
    path: Path,
    baseline: CellResult,
    cells: Sequence[CellResult],
    effect: str,
    budget: Mapping[str, float],
    choices: Mapping[str, Any],
    prompting: Sequence[CellResult] = (),
) -> Path | None:
    """Each measured side effect against the effect, with the budget line; colour = coefficient, P = prompting."""
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm

    keys = [k for k in dict.fromkeys([*budget, "neutral_ppl", "kl", "distinct2"]) if any(k in c.values for c in cells)]
    if not keys:
        return None
    fig = new_figure(3.6 * len(keys) + 0.8, 3.8)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    span = max((abs(c.coef) for c in cells), default=1.0) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-span, vmax=span)
    chosen = _chosen(choices)
    scatter = None
    for ax, key in zip(axes, keys):
        xs = [c.values.get(effect, math.nan) for c in cells]
        ys = [c.values.get(key, math.nan) for c in cells]
        # Far-off cells would flatten the budget region: clip at 3x the budget, drawn as triangles.
        top = 3.0 * budget[key] if key in budget else math.inf
        inside = [y <= top for y in ys]
        colours = [c.coef for c in cells]
        scatter = ax.scatter(
            [x for x, i in zip(xs, inside) if i],
            [y for y, i in zip(ys, inside) if i],
            c=[v for v, i in zip(colours, inside) if i],
            cmap=colormaps["coolwarm"],
            norm=norm,
            s=30,
            edgecolors="black",
            linewidths=0.4,
        )
        if not all(inside):
            ax.scatter(
                [x for x, i in zip(xs, inside) if not i],
                [top] * inside.count(False),
                c=[v for v, i in zip(colours, inside) if not i],
                cmap=colormaps["coolwarm"],
                norm=norm,
                marker="^",
                s=40,
                edgecolors="black",
                linewidths=0.4,
                label=f"off scale (> {top:g})",
            )
            ax.set_ylim(top=top * 1.05)
        ax.scatter(
            [baseline.values.get(effect, math.nan)],
            [baseline.values.get(key, math.nan)],
            marker="X",
            s=90,
            color="black",
            label="unsteered",
        )
        for c, x, y in zip(cells, xs, ys):
            if (c.label, c.coef) in chosen:
                ax.plot(x, y, "*", ms=16, color="black", mfc="gold", zorder=5)
        for c in prompting:
            y = min(c.values.get(key, math.nan), top)
            ax.plot(c.values.get(effect, math.nan), y, marker="$P$", ms=11, color="darkgreen" if c.coef > 0 else "purple", zorder=6)
        if key in budget:
            ax.axhline(budget[key], color="firebrick", ls="--", lw=1, label=f"budget {budget[key]:g}")
        ax.set_xlabel(effect)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if scatter is not None:
        fig.colorbar(scatter, ax=list(axes), label="coefficient", shrink=0.9)
    fig.suptitle("side effects against effect (star: chosen)", fontsize=10)
    return save_figure(fig, path)


def pareto(
    path: Path,
    baseline: CellResult,
    cells: Sequence[CellResult],
    prompting: Sequence[CellResult],
    effect: str,
    budget: Mapping[str, float],
    fronts: Mapping[str, Sequence[int]],
) -> Path:
    """Change of the effect (towards each direction) against budget use (`select.excess`); front joined, P = prompting."""
    from .select import DIRECTIONS, excess

    # The grid's budget: values every cell has (choice metrics such as capability are measured on a few).
    grid_budget = {k: v for k, v in budget.items() if all(k in c.values for c in cells)}
    fig = new_figure(10.0, 4.0)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    base = baseline.values.get(effect, math.nan)
    by_index = {c.index: c for c in cells}
    for ax, (direction, sign) in zip(axes, DIRECTIONS.items()):
        side = [c for c in cells if sign * c.coef > 0]
        groups = list(dict.fromkeys(c.axes for c in side))
        if len(groups) > 1:  # the grid compares methods / data / modes / apply_to: one marker colour per combination
            varying = [i for i in range(len(AXES)) if len({key[i] for key in groups}) > 1]
            for k, key in enumerate(groups):
                members = [c for c in side if c.axes == key]
                ax.scatter(
                    [min(excess(c, grid_budget), 5.0) for c in members],
                    [sign * (c.values.get(effect, math.nan) - base) for c in members],
                    s=22,
                    marker="osD^v<>ph*"[k % 10],
                    edgecolors="black",
                    linewidths=0.3,
                    label=" ".join(axis_label(AXES[i], key[i]) for i in varying),
                )
        else:
            uses = [min(excess(c, grid_budget), 5.0) for c in side]
            gains = [sign * (c.values.get(effect, math.nan) - base) for c in side]
            ax.scatter(
                uses, gains, s=22, c=[len(c.layers) for c in side], cmap="viridis", edgecolors="black", linewidths=0.3, label="cells"
            )
        front = [by_index[i] for i in fronts.get(direction, []) if i in by_index]
        if front:
            ax.plot(
                [min(excess(c, grid_budget), 5.0) for c in front],
                [sign * (c.values[effect] - base) for c in front],
                "-o",
                color="firebrick",
                ms=4,
                lw=1.2,
                label="Pareto front",
            )
        for c in prompting:
            if sign * c.coef > 0:
                use = min(excess(c, grid_budget), 5.0)
                ax.plot(use, sign * (c.values.get(effect, math.nan) - base), marker="$P$", ms=13, color="darkgreen", label="prompting")
        ax.axvline(1.0, color="grey", ls="--", lw=1, label="budget edge")
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_xlabel("budget use (largest value / limit; clipped at 5)")
        ax.set_ylabel(f"{effect} change towards {direction}")
        ax.set_title(direction, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    several = len({c.axes for c in cells}) > 1
    fig.suptitle(f"effect against side effect ({'marker: the grid axes that vary' if several else 'colour: window size'})", fontsize=10)
    return save_figure(fig, path)


def per_example(path: Path, result: Any, effect: str, choices: Mapping[str, Any]) -> Path | None:
    """Per-prompt change of the effect (cell score minus unsteered score) at the chosen and prompting cells."""
    if 0 not in result.scores:
        return None
    chosen = _chosen(choices)
    columns: list[tuple[str, list[float]]] = []
    for c in [*result.prompting, *result.cells]:
        label = None
        if c.label == "prompt":
            label = f"prompting {'+' if c.coef > 0 else '-'}"
        elif (c.label, c.coef) in chosen:
            label = f"{chosen[(c.label, c.coef)]}: {c.label} {c.coef:+g}"
        if label is not None and c.index in result.scores:
            columns.append((label, [s - b for s, b in zip(result.scores[c.index], result.scores[0])]))
    if not columns:
        return None
    fig = new_figure(1.9 * len(columns) + 2.0, 3.8)
    ax = fig.subplots()
    ax.boxplot([v for _, v in columns], showmeans=True)
    for i, (_, values) in enumerate(columns, start=1):
        ax.scatter([i + 0.12] * len(values), values, s=8, alpha=0.5, color="black")
    ax.set_xticks(range(1, len(columns) + 1), [label for label, _ in columns], fontsize=7)
    ax.axhline(0.0, color="firebrick", lw=0.8)
    ax.set_ylabel(f"per-prompt change of {effect}")
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def letter_balance(path: Path, baseline: CellResult, rows: Mapping[str, Mapping[str, float]]) -> Path:
    """Unsteered answer shares (the letter bias) and, per row, the mean steerability slope."""
    shares = {k.removeprefix("share_"): v for k, v in baseline.values.items() if k.startswith("share_")}
    fig = new_figure(8.0, 3.4)
    left, right = fig.subplots(1, 2, width_ratios=[1, 2])
    names = sorted(shares)
    left.bar(
        range(len(names)), [shares[n] for n in names], color=["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"][: len(names)]
    )
    left.set_xticks(range(len(names)), names)
    left.axhline(0.5, color="grey", ls=":", lw=1)
    for k, name in enumerate(names):
        left.text(k, shares[name] + 0.02, f"{shares[name]:.2f}", ha="center", fontsize=9)
    left.set_ylim(0, 1.05)
    left.set_ylabel("share of P(answer A) + P(answer B)")
    left.set_title("unsteered answer balance", fontsize=10)
    labels = list(rows)
    slopes = [rows[r].get("slope", math.nan) for r in labels]
    wrong = [rows[r].get("wrong_sign", math.nan) for r in labels]
    right.bar(range(len(labels)), slopes, color="tab:gray")  # positions, not strings: labels look numeric
    right.set_xticks(range(len(labels)), labels)
    for k, (s, w) in enumerate(zip(slopes, wrong)):
        if math.isfinite(s):
            right.text(k, s, f"{w:.0%} wrong", ha="center", va="bottom" if s >= 0 else "top", fontsize=8)
    right.axhline(0, color="black", lw=0.6)
    # A floor on the scale, so a flat behaviour (slope ~ 0) looks flat instead of filling the axes.
    reach = max([0.1, *(abs(s) * 1.25 for s in slopes if math.isfinite(s))])
    right.set_ylim(-reach, reach)
    right.set_xlabel("layer (window)")
    right.set_ylabel("mean slope of logit diff per coef")
    right.set_title("steerability (Tan et al.); label: items with wrong sign", fontsize=10)
    return save_figure(fig, path)


def probe_layers(
    path: Path,
    per_layer: Mapping[int, Mapping[str, float]],
    keys: tuple[str, ...] = ("probe_accuracy", "probe_auroc"),
    title: str = "linear probe on held-out texts, per layer",
) -> Path:
    """Held-out scores against the layer: probe accuracy and AUROC, or the ``keys`` given (a condition's gate)."""
    layers = sorted(per_layer)
    fig = new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    for key, style in zip(keys, ("o-", "s--", "^:", "v-.")):
        ax.plot(layers, [per_layer[i].get(key, math.nan) for i in layers], style, label=key.removeprefix("probe_"), ms=4)
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0.4, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
