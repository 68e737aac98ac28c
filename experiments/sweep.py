"""The sweep: every (method, data, operation, tokens, layer window, coefficient) cell, measured in turn.

The grid's rows are the product of five axes: the extraction method
(``sweep.methods``, default ``method.name`` alone), the pairs it extracts from
(``data.self_pairs``: ``none``, the given pairs; ``add``, with the model's own
replies; ``only``, those alone; one value or a list), one vector per method
and data; the operation (``sweep.modes``, default ``[add]``), the tokens steered
(``sweep.apply_to``, one value or a list) and the layer windows
(``sweep.layers`` x ``sweep.window``: a window of ``w`` layers starting at
``L`` steers ``L .. L+w-1``). Its columns are the coefficients: ``sweep.coefs``
for ``add`` (the total over the window, ``coef / w`` at each layer),
``sweep.mode_coefs[mode]`` for ``clamp``, ``angular`` (degrees) and
``affine_add`` (the value at each layer), and one cell recorded as coef ``-1``
for ``ablate`` / ``affine_ablate`` (no strength; they turn the behaviour off).
A row's label is its window followed by the values of the axes that vary
(``10-13 pca_diff angular``; the data as ``self_pairs=only``). The baseline (coefficient 0) is
the same for every row, so it is measured once, first; then each row's
non-zero coefficients (each refinement round over all rows at once, so a
parallel runner gets the whole round), and the rows' aggregates (e.g. the A/B
slope) after the last round. Every cell's values go to disk when it finishes.

The grid adapts to the model and to where the budget binds:

- ``sweep.depth`` gives the window starts as fractions of the model's depth
  (``0.4`` is layer 12 of 30 and layer 7 of 18) instead of fixed indices;
- ``sweep.refine`` rounds of bisection per row and sign: between the
  strongest coefficient inside the budget (or 0) and the weakest one beyond
  it, the midpoint is measured (e.g. +-3 between +-2 and +-4, then +-1 below
  +-2 when +-2 already breaks it), so the strength is found where it matters.

Then the *prompting* baseline (``data.instructions``): two cells with no
vector, the instruction for the behaviour (coef +1) and for its opposite
(coef -1) before each prompt, measured by the same metrics.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from torch import nn
from tqdm.auto import tqdm

import steering as st
from steering.apply import COEF_FREE_MODES
from steering.hooks import num_layers, resolve_layers

from .metrics import METRICS, Cell, Context, choice_values
from .metrics import text as text_metrics
from .metrics.base import row_label
from .results import CellResult, GenerationsWriter, MetricsWriter, axis_label
from .schema import ConfigError, self_pairs_axis
from .select import choose

# Rounds of the choice check: each measures the choice metrics on at most one
# cell per direction and grid-axes combination; a cell that breaks their budget is set aside and the
# next best picked. Past this many rounds the rest stay unmeasured (and so
# out of budget), which bounds the cost of a vector that breaks them everywhere.
MAX_CHOICE_CHECKS = 6

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
    prompting: list[CellResult] = field(default_factory=list)
    scores: dict[int, list[float]] = field(default_factory=dict)


Vectors = Mapping[tuple[str, str], st.SteeringVector]
"""The sweep's vectors by ``(method, self_pairs)``: one per extraction method and data of the grid."""


@dataclass(frozen=True)
class Row:
    """One row of the grid: ``layers`` steered with the vector of ``method`` on ``self_pairs``'s data, by ``mode`` on ``apply_to``.

    ``tag`` holds the values of the axes that vary in this sweep (see module docs).
    """

    layers: tuple[int, ...]
    method: str
    mode: str = "add"
    apply_to: str = "all"
    tag: str = ""
    self_pairs: str = "none"

    @property
    def label(self) -> str:
        return row_label(self.layers, self.tag)

    @property
    def axes(self) -> tuple[str, str, str, str]:
        return self.method, self.mode, self.apply_to, self.self_pairs

    def cell(self, index: int, coef: float, vectors: Vectors) -> Cell:
        """The cell of this row at ``coef``, numbered ``index``."""
        vector = vectors[self.method, self.self_pairs].select(self.layers)
        return Cell(
            index, self.layers, coef, vector, self.apply_to, mode=self.mode, method=self.method, tag=self.tag, self_pairs=self.self_pairs
        )


def as_list(value: Any) -> list[str]:
    """A config value that is one string or a list of them, as a list."""
    return [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]


def grid_axes(cfg: DictConfig) -> dict[str, list[str]]:
    """The grid's axes besides windows and coefficients: ``method``, ``self_pairs``, ``mode`` and ``apply_to`` values, in order."""
    methods = as_list(cfg.sweep.methods) if cfg.sweep.methods is not None else [str(cfg.method.name)]
    return {
        "method": methods,
        "self_pairs": self_pairs_axis(cfg.data.self_pairs),
        "mode": as_list(cfg.sweep.modes),
        "apply_to": as_list(cfg.sweep.apply_to),
    }


def vector_keys(cfg: DictConfig) -> list[tuple[str, str]]:
    """The ``(method, self_pairs)`` of every vector the grid needs, in order (the first one's file is ``vector.safetensors``)."""
    axes = grid_axes(cfg)
    return list(itertools.product(axes["method"], axes["self_pairs"]))


def plan_rows(cfg: DictConfig, windows: list[tuple[int, ...]]) -> list[Row]:
    """The grid's rows: every method x self_pairs x mode x apply_to x window (`grid_axes`; windows innermost)."""
    axes = grid_axes(cfg)
    varying = [name for name, values in axes.items() if len(values) > 1]
    rows: list[Row] = []
    for values in itertools.product(*axes.values()):
        at = dict(zip(axes, values, strict=True))
        tag = " ".join(axis_label(name, v) for name, v in at.items() if name in varying)
        rows.extend(Row(window, at["method"], at["mode"], at["apply_to"], tag, at["self_pairs"]) for window in windows)
    return rows


def row_coefs(cfg: DictConfig, mode: str) -> list[float]:
    """A row's non-zero coefficients for ``mode`` (see module docs)."""
    if mode in COEF_FREE_MODES:
        return [-1.0]
    values = cfg.sweep.coefs if mode == "add" else cfg.sweep.mode_coefs[mode]
    return [float(c) for c in values if float(c) != 0.0]


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


def depth_starts(model_layers: int, depth: list[float], windows: list[int]) -> list[int]:
    """Window starts at fractions of the depth: ``round(f * model_layers)``, kept where the widest window fits.

    Raises:
        ConfigError: a fraction outside [0, 1).
    """
    starts: list[int] = []
    for fraction in depth:
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"sweep.depth has {fraction}: fractions of the depth are in [0, 1)")
        start = min(round(fraction * model_layers), model_layers - max(windows))
        if start not in starts:
            starts.append(max(start, 0))
    return starts


def grid(cfg: DictConfig, model: nn.Module) -> list[tuple[int, ...]]:
    """The layer windows for ``cfg.sweep`` on ``model`` (``sweep.depth`` wins over ``sweep.layers``)."""
    windows = [int(w) for w in cfg.sweep.window]
    if cfg.sweep.depth is not None:
        return plan_windows(num_layers(model), depth_starts(num_layers(model), [float(f) for f in cfg.sweep.depth], windows), windows)
    return plan_windows(num_layers(model), resolve_starts(model, cfg.sweep.layers), windows)


def next_coefs(measured: list[CellResult], budget: dict[str, float]) -> list[float]:
    """One bisection step per sign over one row's cells (see module docs); ``[]`` where nothing binds.

    ``budget`` holds the grid's values only (choice metrics are measured later).
    """
    out = []
    for sign in (1.0, -1.0):
        side = sorted((c for c in measured if sign * c.coef > 0), key=lambda c: abs(c.coef))
        inside = [abs(c.coef) for c in side if c.within(budget)]
        strongest = max(inside, default=0.0)
        beyond = [abs(c.coef) for c in side if abs(c.coef) > strongest and not c.within(budget)]
        if beyond:
            midpoint = round((strongest + min(beyond)) / 2, 3)
            if midpoint not in {abs(c.coef) for c in side} and midpoint > 0:
                out.append(sign * midpoint)
    return out


def instructions(cfg: DictConfig) -> dict[float, str]:
    """The prompting cells' instructions by sign: ``data.instructions.positive`` (+1), ``.negative`` (-1)."""
    given = dict(cfg.data.instructions or {})
    return {sign: str(given[name]) for name, sign in (("positive", 1.0), ("negative", -1.0)) if given.get(name)}


def _measure(ctx: Context, cell: Cell, names: list[str]) -> dict[str, float]:
    """The values of the metrics ``names`` on ``cell``."""
    values: dict[str, float] = {}
    for name in names:
        values.update(METRICS[name].fn(ctx, cell))
    return values


def measure(ctx: Context, cell: Cell) -> CellResult:
    """Measure ``cell`` with every cell metric of the config; its texts stay in ``cell.cache``."""
    names = [n for n in ctx.cfg.metric.use if METRICS[n].kind == "cell"]
    values = _measure(ctx, cell, names)
    if any("prompts" in METRICS[n].needs for n in names):
        text_metrics.generations(ctx, cell)  # cached: the generations the metrics scored
    return _result(cell, values)


def _result(cell: Cell, values: dict[str, float]) -> CellResult:
    return CellResult(
        cell.index, cell.label, cell.layers, cell.coef, cell.layer_coef, values, cell.method, cell.mode, cell.apply_to, cell.self_pairs
    )


CellRunner = Callable[[Context, list[Cell]], Iterator[tuple[Cell, CellResult]]]
"""Measures cells and yields each with its result as it finishes, in any order.

Each yielded cell carries the ``cache`` its metrics filled (generations,
scores, A/B logit differences), which row aggregates and the report read.
"""


def serial_cells(ctx: Context, cells: list[Cell]) -> Iterator[tuple[Cell, CellResult]]:
    """The one-process `CellRunner`: every cell in turn on ``ctx.model``."""
    for cell in cells:
        yield cell, measure(ctx, cell)


def run_sweep(ctx: Context, vectors: Vectors, rows: list[Row], out_dir: Path, runner: CellRunner = serial_cells) -> SweepResult:
    """Measure the baseline, then every cell of ``rows`` x their coefficients (`row_coefs`).

    ``vectors`` holds one vector per ``(method, self_pairs)`` of the rows.

    The baseline and the per-layer metrics run here; the steered cells run on
    ``runner`` (`serial_cells`, or Ray workers: `experiments.distributed`).
    Values are appended to ``out_dir/metrics.csv`` (and generations to
    ``generations.jsonl``) as each cell finishes, and the rows' aggregates
    after the last refinement round. A ``KeyboardInterrupt`` stops the sweep and
    returns what was measured, with ``interrupted`` set.
    """
    cfg = ctx.cfg
    cell_metrics = [n for n in cfg.metric.use if METRICS[n].kind == "cell"]
    layer_metrics = [n for n in cfg.metric.use if METRICS[n].kind == "layer"]
    apply_to = as_list(cfg.sweep.apply_to)[0]  # the unsteered and prompting cells steer no token
    effect = str(cfg.metric.effect)
    refine = int(cfg.sweep.refine)
    grid_budget = {str(k): float(v) for k, v in cfg.budget.items() if k not in choice_values(cfg)}
    asked = instructions(cfg)
    wants_text = any("prompts" in METRICS[n].needs for n in cell_metrics)
    planned = 1 + len(asked) + sum(len(row_coefs(cfg, r.mode)) + (0 if r.mode in COEF_FREE_MODES else 2 * refine) for r in rows)
    result = SweepResult(baseline=None, cells=[], planned=planned)
    bar = tqdm(total=result.planned, desc="sweep", unit="cell", disable=not cfg.progress)
    metrics_file = MetricsWriter(out_dir / "metrics.csv")
    texts_file = GenerationsWriter(out_dir / "generations.jsonl") if wants_text else None
    try:
        for name in layer_metrics:
            wanted = sorted({i for row in rows for i in row.layers})
            for layer, values in METRICS[name].fn(ctx, wanted).items():
                result.layers.setdefault(layer, {}).update(values)
                metrics_file.aggregate(str(layer), [layer], values)

        def finish(cell: Cell, measured: CellResult) -> CellResult:
            if texts_file is not None:
                texts = cell.cache["generations"]
                result.generations[cell.index] = texts
                if "scores" in cell.cache:
                    result.scores[cell.index] = cell.cache["scores"]
                texts_file.cell(measured, ctx.data.prompts, texts, cell.cache.get("scores"))
            value = measured.values.get(effect, math.nan)
            bar.set_postfix_str(f"{measured.label} coef={cell.coef:+g} {effect}={value:.3f}")
            bar.update()
            return measured

        baseline_cell = Cell(0, apply_to=apply_to)
        result.baseline = finish(baseline_cell, measure(ctx, baseline_cell))
        for row in rows:
            metrics_file.cell(result.baseline, like=row)
        index = 1
        for sign, instruction in asked.items():
            cell = Cell(index, (), sign, None, apply_to, instruction=instruction)
            index += 1
            measured = finish(cell, measure(ctx, cell))
            metrics_file.cell(measured)
            result.prompting.append(measured)
        by_label = {row.label: row for row in rows}
        row_cells: dict[str, list[Cell]] = {row.label: [] for row in rows}
        row_results: dict[str, list[CellResult]] = {row.label: [] for row in rows}
        todo = {row.label: row_coefs(cfg, row.mode) for row in rows}
        for _ in range(refine + 1):
            # One round: every row's next coefficients, measured on the runner (in any
            # order); the bisection of the next round reads the whole round.
            cells: list[Cell] = []
            for row in rows:
                for coef in todo[row.label]:
                    cells.append(row.cell(index, coef, vectors))
                    index += 1
            if not cells:
                break
            for cell, measured in runner(ctx, cells):
                metrics_file.cell(finish(cell, measured))
                result.cells.append(measured)
                row_results[cell.label].append(measured)
                row_cells[cell.label].append(cell)
            # Modes without a strength have one cell per row: nothing to bisect.
            todo = {label: [] if by_label[label].mode in COEF_FREE_MODES else next_coefs(row_results[label], grid_budget) for label in todo}
        for row in rows:
            done = sorted(row_cells[row.label], key=lambda c: c.index)
            aggregates: dict[str, float] = {}
            for name in cell_metrics:
                row_fn = METRICS[name].row
                if row_fn is not None:
                    aggregates.update(row_fn(ctx, [baseline_cell, *done]))
            if aggregates:
                result.rows[row.label] = aggregates
                metrics_file.aggregate(row.label, row.layers, aggregates, axes=row.axes)
            # Keep only what later steps read: the generations (report) live in `result`.
            for done_cell in done:
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


def check_choice(ctx: Context, vectors: Vectors, result: SweepResult, out_dir: Path) -> None:
    """Measure the ``choice`` metrics (e.g. ``capability``) where the choice needs them, appending to ``metrics.csv``.

    They are measured on the baseline, the prompting cells and the cell each
    direction would choose on the grid's budget, over all cells and (when the
    grid compares methods, data, modes or tokens) within each combination of
    them, whose best cell ``by_axes`` reports; a cell that breaks the choice
    metrics' budget is set aside and the next best measured, for at most
    `MAX_CHOICE_CHECKS` rounds. `summary.sweep_summary` then chooses with the
    whole budget among the measured cells.
    """
    cfg = ctx.cfg
    names = [n for n in cfg.metric.use if METRICS[n].kind == "choice"]
    if not names or result.baseline is None:
        return
    budget = {str(k): float(v) for k, v in cfg.budget.items()}
    grid_budget = {k: v for k, v in budget.items() if k not in choice_values(cfg)}
    asked = instructions(cfg)
    apply_to = as_list(cfg.sweep.apply_to)[0]
    with MetricsWriter(out_dir / "metrics.csv") as writer:

        def measure(res: CellResult) -> None:
            if res.index == 0:
                cell = Cell(0, apply_to=apply_to)
            elif not res.layers:
                cell = Cell(res.index, (), res.coef, None, apply_to, instruction=asked[res.coef])
            else:
                vector = vectors[res.method, res.self_pairs].select(res.layers)
                cell = Cell(
                    res.index, res.layers, res.coef, vector, res.apply_to, mode=res.mode, method=res.method, self_pairs=res.self_pairs
                )
            values = _measure(ctx, cell, names)
            res.values.update(values)
            measured = CellResult(res.index, res.label, res.layers, res.coef, res.layer_coef, values, *res.axes)
            if res.index == 0:  # as in run_sweep: the baseline is written once per row
                for row in {c.label: c for c in result.cells}.values():
                    writer.cell(measured, like=row)
            else:
                writer.cell(measured)
            log.info("%s coef=%+g: %s", res.label, res.coef, ", ".join(f"{k}={v:.3f}" for k, v in values.items()))

        for res in [result.baseline, *result.prompting]:
            measure(res)
        by_index = {c.index: c for c in result.cells}
        set_aside: set[int] = set()
        # The overall pick per direction is the best of the combinations' picks, so picking
        # within each combination (method, mode, apply_to, self_pairs) covers both.
        groups = [[c for c in result.cells if c.axes == key] for key in dict.fromkeys(c.axes for c in result.cells)]
        effect, min_delta = str(cfg.metric.effect), float(cfg.select.min_delta)
        for _ in range(MAX_CHOICE_CHECKS):
            picks = [
                pick
                for group in groups
                for pick in choose([c for c in group if c.index not in set_aside], result.baseline, effect, grid_budget, min_delta).values()
            ]
            todo = list({p["cell"]: by_index[p["cell"]] for p in picks if p.get("cell") is not None}.values())
            todo = [c for c in todo if not all(k in c.values for k in choice_values(cfg))]
            if not todo:
                return
            for res in todo:
                measure(res)
                if not res.within(budget):
                    set_aside.add(res.index)
        log.warning("choice check: stopped after %d rounds; cells not measured count as over budget", MAX_CHOICE_CHECKS)
