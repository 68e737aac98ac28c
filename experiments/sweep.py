"""The sweep: one vector, every (layer window, coefficient) cell, measured in turn.

The grid's rows are layer windows (``sweep.layers`` x ``sweep.window``: a
window of ``w`` layers starting at ``L`` steers ``L .. L+w-1``, each with
``coef / w``), its columns the coefficients. The baseline (coefficient 0) is
the same for every row, so it is measured once, first; then each row's
non-zero coefficients, and the row's aggregates (e.g. the A/B slope) as soon
as the row is complete. Every cell's values go to disk when it finishes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

import steering as st
from steering.hooks import num_layers, resolve_layers

from .metrics import METRICS, Cell, Context, window_label
from .metrics import text as text_metrics
from .results import CellResult, GenerationsWriter, MetricsWriter
from .schema import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What a sweep measured (all of it, or up to an interruption)."""

    baseline: CellResult | None
    cells: list[CellResult]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    layers: dict[int, dict[str, float]] = field(default_factory=dict)
    generations: dict[int, list[str]] = field(default_factory=dict)
    interrupted: bool = False
    planned: int = 0


def plan_windows(model_layers: int, layers: list[int] | None, windows: list[int]) -> list[tuple[int, ...]]:
    """The grid's rows: one tuple of layers per (start layer, window size).

    Raises:
        ConfigError: a window that runs past the last layer.
    """
    rows: list[tuple[int, ...]] = []
    for size in windows:
        starts = range(model_layers - size + 1) if layers is None else layers
        for start in starts:
            if start + size > model_layers:
                raise ConfigError(
                    f"sweep.layers has {start} with sweep.window={size}: layers {start}..{start + size - 1} "
                    f"run past the model's last layer ({model_layers - 1})"
                )
            row = tuple(range(start, start + size))
            if row not in rows:
                rows.append(row)
    return rows


def resolve_starts(model: nn.Module, layers: list[int] | None) -> list[int] | None:
    """Normalise negative start layers (``None`` stays: every layer)."""
    if layers is None:
        return None
    try:
        return resolve_layers(model, list(layers))
    except st.LayerError as exc:
        raise ConfigError(f"sweep.layers={list(layers)}: {exc}") from None


def grid(cfg: DictConfig, model: nn.Module) -> list[tuple[int, ...]]:
    """The rows for ``cfg.sweep`` on ``model``."""
    windows = [int(w) for w in cfg.sweep.window]
    return plan_windows(num_layers(model), resolve_starts(model, cfg.sweep.layers), windows)


def measure(ctx: Context, cell: Cell) -> CellResult:
    """Measure ``cell`` with every cell metric of the config; its texts stay in ``cell.cache``."""
    names = [n for n in ctx.cfg.metric.use if METRICS[n].kind == "cell"]
    values: dict[str, float] = {}
    for name in names:
        values.update(METRICS[name].fn(ctx, cell))
    if any("prompts" in METRICS[n].needs for n in names):
        text_metrics.generations(ctx, cell)  # cached: the generations the metrics scored
    return CellResult(cell.index, cell.label, cell.layers, cell.coef, cell.layer_coef, values)


CellRunner = Callable[[Context, list[Cell]], Iterator[tuple[Cell, CellResult]]]
"""Measures cells and yields each with its result as it finishes, in any order.

Each yielded cell carries the ``cache`` its metrics filled (generations,
scores, A/B logit differences), which row aggregates and the report read.
"""


def serial_cells(ctx: Context, cells: list[Cell]) -> Iterator[tuple[Cell, CellResult]]:
    """The one-process `CellRunner`: every cell in turn on ``ctx.model``."""
    for cell in cells:
        yield cell, measure(ctx, cell)


def run_sweep(
    ctx: Context, vector: st.SteeringVector, rows: list[tuple[int, ...]], out_dir: Path, runner: CellRunner = serial_cells
) -> SweepResult:
    """Measure the baseline, then every cell of ``rows`` x the non-zero ``sweep.coefs``.

    The baseline and the per-layer metrics run here; the steered cells run on
    ``runner`` (`serial_cells`, or Ray workers: `experiments.distributed`).
    Values are appended to ``out_dir/metrics.csv`` (and generations to
    ``generations.jsonl``) as each cell finishes, and a row's aggregates as
    soon as its last cell is in. A ``KeyboardInterrupt`` stops the sweep and
    returns what was measured, with ``interrupted`` set.
    """
    cfg = ctx.cfg
    cell_metrics = [n for n in cfg.metric.use if METRICS[n].kind == "cell"]
    layer_metrics = [n for n in cfg.metric.use if METRICS[n].kind == "layer"]
    coefs = [float(c) for c in cfg.sweep.coefs if float(c) != 0.0]
    apply_to = str(cfg.sweep.apply_to)
    effect = str(cfg.metric.effect)
    wants_text = any("prompts" in METRICS[n].needs for n in cell_metrics)
    result = SweepResult(baseline=None, cells=[], planned=1 + len(rows) * len(coefs))
    bar = tqdm(total=result.planned, desc="sweep", unit="cell", disable=not cfg.progress)
    metrics_file = MetricsWriter(out_dir / "metrics.csv")
    texts_file = GenerationsWriter(out_dir / "generations.jsonl") if wants_text else None
    try:
        for name in layer_metrics:
            wanted = sorted({i for row in rows for i in row})
            for layer, values in METRICS[name].fn(ctx, wanted).items():
                result.layers.setdefault(layer, {}).update(values)
                metrics_file.aggregate(str(layer), [layer], values)

        def finish(cell: Cell, measured: CellResult) -> CellResult:
            if texts_file is not None:
                texts = cell.cache["generations"]
                result.generations[cell.index] = texts
                texts_file.cell(measured, ctx.data.prompts, texts, cell.cache.get("scores"))
            value = measured.values.get(effect, math.nan)
            bar.set_postfix_str(f"{measured.label} coef={cell.coef:+g} {effect}={value:.3f}")
            bar.update()
            return measured

        baseline_cell = Cell(0, apply_to=apply_to)
        result.baseline = finish(baseline_cell, measure(ctx, baseline_cell))
        for row in rows:
            metrics_file.cell(result.baseline, label=window_label(row), layers=row)
        cells: list[Cell] = []
        for row in rows:
            row_vector = vector.select(row)
            for coef in coefs:
                cells.append(Cell(1 + len(cells), row, coef, row_vector, apply_to))
        done: dict[tuple[int, ...], list[Cell]] = {row: [] for row in rows}
        for cell, measured in runner(ctx, cells):
            metrics_file.cell(finish(cell, measured))
            result.cells.append(measured)
            row_cells = done[cell.layers]
            row_cells.append(cell)
            if len(row_cells) < len(coefs):
                continue
            row_cells.sort(key=lambda c: c.index)
            aggregates: dict[str, float] = {}
            for name in cell_metrics:
                row_fn = METRICS[name].row
                if row_fn is not None:
                    aggregates.update(row_fn(ctx, [baseline_cell, *row_cells]))
            if aggregates:
                result.rows[window_label(cell.layers)] = aggregates
                metrics_file.aggregate(window_label(cell.layers), cell.layers, aggregates)
            # Keep only what later steps read: the generations (report) live in `result`.
            for done_cell in row_cells:
                done_cell.cache.clear()
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("sweep interrupted after %d of %d cells; keeping what was measured", bar.n, result.planned)
    finally:
        bar.close()
        metrics_file.close()
        if texts_file is not None:
            texts_file.close()
    result.cells.sort(key=lambda c: c.index)  # other runners finish in any order
    return result
