"""Files a run writes as it goes: ``metrics.csv`` and ``generations.jsonl``.

Both are appended to and flushed to disk after every cell, so an interrupted
sweep keeps every cell it finished. ``metrics.csv`` is long-format, one row
per (cell, value):

===========  =============================================================
cell         index of the cell (0 = baseline); empty for per-row and
             per-layer values
layer        row label: ``12``, ``10-14`` (a window) or ``baseline``,
             followed by the values of the grid axes that vary in this
             sweep (``10-14 pca_diff angular generated``)
layers       the layers steered, space-separated
coef         the grid coefficient (with ``add`` the total over the window);
             empty for values computed across coefficients (e.g. ``slope``)
layer_coef   the coefficient applied at each layer of the window
method       the extraction method of the row's vector
mode         the operation (``add``, ``clamp``, ``angular``, ...)
apply_to     the tokens steered (``all``, ``prompt``, ``generated``)
self_pairs   the pairs the vector was extracted from: ``none`` (the data's
             pairs), ``add`` (and the model's own replies), ``only`` (those)
metric       value name (``sentiment``, ``kl``, ...)
value        the number
===========  =============================================================

``method``, ``mode``, ``apply_to`` and ``self_pairs`` are empty for per-layer
values and for the prompting cells (no vector).

The baseline (coef 0) is measured once and written once per row, so every
row of the grid has its coef-0 point.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TextIO

COLUMNS = ("cell", "layer", "layers", "coef", "layer_coef", "method", "mode", "apply_to", "self_pairs", "metric", "value")
AXES = ("method", "mode", "apply_to", "self_pairs")  # a row's place on the grid besides its window


def axis_label(name: str, value: str) -> str:
    """How labels show a value of the grid axis ``name``: bare (``pca_diff``), the data as ``self_pairs=only``."""
    return f"{name}={value}" if name == "self_pairs" else value


@dataclass
class CellResult:
    """The measured values of one cell, and where it sits on the grid's axes."""

    index: int
    label: str
    layers: tuple[int, ...]
    coef: float
    layer_coef: float
    values: dict[str, float] = field(default_factory=dict)
    method: str = ""
    mode: str = "add"
    apply_to: str = "all"
    self_pairs: str = "none"

    @property
    def axes(self) -> tuple[str, str, str, str]:
        """``(method, mode, apply_to, self_pairs)`` (`AXES`): the row's place on the grid axes other than the window."""
        return self.method, self.mode, self.apply_to, self.self_pairs

    def within(self, budget: Mapping[str, float]) -> bool:
        """True if every budgeted value is measured, finite and at most its limit."""
        for key, limit in budget.items():
            value = self.values.get(key, math.nan)
            if not math.isfinite(value) or value > limit:
                return False
        return True


class RowLike(Protocol):
    """A grid row as ``metrics.csv`` names it: label, layers and axes (a `CellResult` or a `sweep.Row`)."""

    @property
    def label(self) -> str: ...

    @property
    def layers(self) -> tuple[int, ...]: ...

    @property
    def axes(self) -> tuple[str, str, str, str]: ...


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return repr(float(value))


class _Appender:
    """An append-mode text file flushed and synced after every write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8", newline="")

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MetricsWriter(_Appender):
    """Appends rows to ``metrics.csv`` (see module docs), header first if the file is new."""

    def __init__(self, path: Path) -> None:
        fresh = not path.exists() or path.stat().st_size == 0
        super().__init__(path)
        self._csv = csv.writer(self._file)
        if fresh:
            self._csv.writerow(COLUMNS)
            self._sync()

    def cell(self, result: CellResult, like: RowLike | None = None) -> None:
        """Write every value of ``result`` (under the row of ``like``, its label, layers and axes, if given)."""
        row = result if like is None else like
        axes = ("",) * len(AXES) if not row.layers else row.axes
        for name, value in result.values.items():
            self._csv.writerow(
                [
                    result.index,
                    row.label,
                    " ".join(map(str, row.layers)),
                    _fmt(result.coef),
                    _fmt(result.layer_coef),
                    *axes,
                    name,
                    _fmt(value),
                ]
            )
        self._sync()

    def aggregate(
        self,
        label: str,
        layers: Sequence[int],
        values: Mapping[str, float],
        coef: float | None = None,
        axes: tuple[str, ...] = ("",) * len(AXES),
    ) -> None:
        """Write values that belong to a row (``axes``: its `AXES` values) or a layer rather than to one cell."""
        for name, value in values.items():
            self._csv.writerow(["", label, " ".join(map(str, layers)), _fmt(coef), "", *axes, name, _fmt(value)])
        self._sync()


class GenerationsWriter(_Appender):
    """Appends one JSON line per generated text to ``generations.jsonl``."""

    def cell(self, result: CellResult, prompts: Sequence[str], texts: Sequence[str], scores: Sequence[float] | None) -> None:
        """Write the cell's texts (and their scores when there are any)."""
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            record: dict[str, Any] = {"cell": result.index, "layer": result.label, "coef": result.coef, "prompt": prompt, "text": text}
            if result.layers:
                record.update(zip(AXES, result.axes, strict=True))
            if scores is not None:
                record["score"] = scores[i]
            self._file.write(json.dumps(record) + "\n")
        self._sync()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` with numbers parsed (empty fields become ``None``)."""
    rows = []
    with Path(path).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = dict(row)
            for key in ("cell",):
                parsed[key] = int(row[key]) if row[key] else None
            for key in ("coef", "layer_coef", "value"):
                parsed[key] = float(row[key]) if row[key] else None
            rows.append(parsed)
    return rows
