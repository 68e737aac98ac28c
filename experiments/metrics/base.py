"""What every metric sees: the evaluation data, the model, and the cell under test.

A *cell* is one point of the sweep grid: an extraction method, an operation
(``mode``), the tokens steered (``apply_to``), a window of layers and a
coefficient (the baseline cell has no layers and coefficient 0). A
*prompting* cell steers with words instead: no vector, an instruction for
the behaviour (coef +1) or its opposite (coef -1) put before every prompt,
measured with the same metrics as the steering cells. Metrics do
not steer the model themselves but enter ``cell.steering(model)`` around the
passes that should be steered, so one metric may mix steered and unsteered
passes (``gen_ppl`` scores steered text with the unsteered model).

Work shared between metrics of one cell (the generations, the steered pass on
the neutral text) is kept in ``cell.cache``; work shared between cells (the
unsteered pass on the neutral text) in ``Context.cache``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from omegaconf import DictConfig
from torch import nn

import steering as st
from steering.self_pairs import instructed

from .data import EvalData

Values = dict[str, float]


@dataclass
class Cell:
    """One grid point: steer ``layers`` with the vector by ``mode`` at ``layer_coef`` each.

    Attributes:
        index: position in the sweep (0 is the baseline); seeds sampling.
        layers: the window of layers steered (empty for the baseline).
        coef: the grid coefficient: with ``add`` the total over the window,
            with the other modes the value at each layer (an angle for
            ``angular``); ``-1`` for the modes without one (``ablate``,
            ``affine_ablate``: they turn the behaviour off).
        vector: the vector restricted to ``layers`` (``None`` for the baseline).
        apply_to: ``all``, ``prompt`` or ``generated`` (the tokens steered).
        cache: per-cell results shared between metrics (see module docs).
        instruction: for a prompting cell, the instruction put before each prompt.
        mode: the operation (``st.MODES``).
        method: the extraction method of ``vector`` (for labels and the summary).
        tag: the values of the grid axes that vary in this sweep
            (``"pca_diff angular"``), shown after the window in the row label.
        self_pairs: the data ``vector`` was extracted from (``none``, ``add``,
            ``only``: ``data.self_pairs``).
    """

    index: int
    layers: tuple[int, ...] = ()
    coef: float = 0.0
    vector: st.SteeringVector | None = None
    apply_to: str = "all"
    cache: dict[str, Any] = field(default_factory=dict)
    instruction: str | None = None
    mode: str = "add"
    method: str = ""
    tag: str = ""
    self_pairs: str = "none"

    @property
    def steers(self) -> bool:
        """True when a vector is applied (a non-zero coefficient)."""
        return self.vector is not None and self.coef != 0.0

    @property
    def is_baseline(self) -> bool:
        """True for the unsteered cell (no vector, no instruction)."""
        return not self.steers and self.instruction is None

    def prompt(self, prompt: str) -> str:
        """``prompt`` as this cell asks it: after the instruction for a prompting cell."""
        return prompt if self.instruction is None else instructed(self.instruction, prompt)

    @property
    def layer_coef(self) -> float:
        """Coefficient applied at each layer of the window (`layer_coef`)."""
        return layer_coef(self.coef, self.layers, self.mode)

    @property
    def label(self) -> str:
        """Row label: ``"12"``, ``"10-14"`` (a window), then the `tag`; ``"baseline"``, ``"prompt"``."""
        return PROMPTING if self.instruction is not None else row_label(self.layers, self.tag)

    def steering(self, model: nn.Module) -> AbstractContextManager[Any]:
        """Context manager that steers ``model`` as this cell says (nothing without a vector)."""
        if not self.steers:
            return nullcontext()
        assert self.vector is not None
        return st.steer(model, self.vector, coef=self.layer_coef, apply_to=cast(st.ApplyTo, self.apply_to), mode=cast(st.Mode, self.mode))


PROMPTING = "prompt"  # row label of the prompting cells


def layer_coef(coef: float, layers: tuple[int, ...], mode: str) -> float:
    """The coefficient at each layer: ``add`` splits ``coef`` evenly over the window; the other modes set or
    rotate each layer by the same amount, so each layer gets ``coef`` itself."""
    if not layers:
        return 0.0
    return coef / len(layers) if mode == "add" else coef


def row_label(layers: tuple[int, ...] | list[int], tag: str = "") -> str:
    """`window_label` followed by ``tag`` (the varying grid axes), e.g. ``"10-13 pca_diff angular"``."""
    label = window_label(layers)
    return f"{label} {tag}" if tag and layers else label


def window_label(layers: tuple[int, ...] | list[int]) -> str:
    """``"12"``, ``"10-14"`` (a contiguous window) or ``"baseline"`` (no layers)."""
    if not layers:
        return "baseline"
    if len(layers) == 1:
        return str(layers[0])
    return f"{layers[0]}-{layers[-1]}"


@dataclass
class Context:
    """The model, its tokenizer, the run config and the evaluation data."""

    model: nn.Module
    tokenizer: Any
    cfg: DictConfig
    data: EvalData
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        """The run's seed."""
        return int(self.cfg.seed)


RowFn = Callable[[Context, list[Cell]], Values]


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        fn: ``fn(ctx, cell) -> values`` for ``kind="cell"``; ``fn(ctx, layers)
            -> {layer: values}`` for ``kind="layer"`` (no steering involved).
        values: names of the values it reports, given the config.
        needs: the `EvalData` fields it reads (loaded before the model).
        kind: ``cell`` (per grid point), ``layer`` (per layer, once) or
            ``choice`` (a cell's ``fn``, too costly for the whole grid: run on
            the baseline, the prompting cells and the cells a choice picks).
        row: optional ``row(ctx, cells) -> values`` over one row of cells
            (the baseline first), e.g. a slope against the coefficient.
        row_values: names of the values ``row`` reports.
        doc: one line for listings.
    """

    fn: Callable[..., Any]
    values: Callable[[DictConfig], list[str]]
    needs: frozenset[str]
    kind: Literal["cell", "layer", "choice"] = "cell"
    row: RowFn | None = None
    row_values: tuple[str, ...] = ()
    doc: str = ""
