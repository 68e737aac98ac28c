"""``report.html``: one self-contained page (images inlined) showing a run.

It holds the choice for each direction, the unsteered values (for A/B runs
the letter balance), the figures, example generations at the baseline and the
chosen cells, every measured cell, and the resolved config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steering.compare import to_jsonable

from .html import data_uri, write_page
from .metrics.base import PROMPTING
from .results import CellResult


def _examples(
    summary: Mapping[str, Any], prompts: Sequence[str], generations: Mapping[int, Sequence[str]], cells: Sequence[CellResult], count: int
) -> dict[str, Any] | None:
    """Columns of the example table: the unsteered texts, then each direction's chosen cell."""
    columns: list[tuple[str, Sequence[str]]] = []
    if 0 in generations:
        columns.append(("unsteered", generations[0]))
    for direction, choice in summary["directions"].items():
        if choice.get("best_layer") is None:
            continue
        for c in cells:
            if c.label == choice["window"] and c.coef == choice["grid_coef"] and c.index in generations:
                columns.append((f"{direction}: layer {c.label}, coef {c.coef:+g}", generations[c.index]))
    for c in cells:
        if c.label == PROMPTING and c.index in generations:
            columns.append((f"prompting: {'positive' if c.coef > 0 else 'negative'} instruction", generations[c.index]))
    if not columns or count < 1:
        return None
    return {"columns": columns, "prompts": list(prompts[:count])}


def write_report(
    path: Path,
    summary: Mapping[str, Any],
    figures: Sequence[tuple[Path, str]],
    config_yaml: str,
    *,
    baseline: CellResult | None = None,
    cells: Sequence[CellResult] = (),
    prompts: Sequence[str] = (),
    generations: Mapping[int, Sequence[str]] | None = None,
    examples: int = 3,
) -> Path:
    """Write the report page (``templates/run_report.html.j2``, atomically) and return its path."""
    every_cell = [baseline, *cells] if baseline is not None and cells else []
    effect = summary.get("effect")
    return write_page(
        path,
        "run_report.html.j2",
        summary=summary,
        statuses={c["status"] for c in summary.get("directions", {}).values()},
        row_names=list(dict.fromkeys(k for values in (summary.get("rows") or {}).values() for k in values)),
        figures=[{"src": data_uri(p), "caption": caption} for p, caption in figures],
        examples=_examples(summary, prompts, generations, cells, examples) if generations else None,
        cells=every_cell,
        cell_names=list(dict.fromkeys([effect, *summary.get("budget", {}), *(k for c in every_cell for k in c.values)]))
        if every_cell
        else [],
        summary_json=json.dumps(to_jsonable(summary), indent=1, default=str),
        config_yaml=config_yaml,
    )
