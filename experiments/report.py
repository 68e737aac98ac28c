"""``report.html``: one self-contained page (images inlined) showing a run.

It holds the choice for each direction, the unsteered values (for A/B runs
the letter balance), the figures, example generations at the baseline and the
chosen cells, every measured cell, and the resolved config.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vectors import atomic_write

from .results import CellResult

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.86em;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4} .num{text-align:right;font-variant-numeric:tabular-nums} .over{color:#999}
.ok{color:#176b1f;font-weight:600} .bad{color:#a0251b;font-weight:600} .muted{color:#666;font-size:.9em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return html.escape(str(value)) if value is not None else "–"


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption class="muted">{html.escape(caption)}</figcaption></figure>'


def _choices(summary: Mapping[str, Any]) -> str:
    effect = summary["effect"]
    head = "<tr><th>direction</th><th>status</th><th>layer(s)</th><th>coef per layer</th><th>grid coef</th>"
    head += f"<th>{html.escape(effect)}</th><th>change vs unsteered</th><th>side effects</th></tr>"
    body = []
    for direction, choice in summary["directions"].items():
        status = choice["status"]
        css = "ok" if status == "ok" else "bad"
        shown = choice if choice.get("best_layer") is not None else choice.get("closest")
        if shown is None:
            body.append(f"<tr><td>{direction}</td><td class='{css}'>{status}</td>" + "<td>–</td>" * 6 + "</tr>")
            continue
        prefix = "" if shown is choice else "closest: "
        sides = ", ".join(f"{k} {_num(v)}" for k, v in shown["side_effects"].items())
        body.append(
            f"<tr><td>{direction}</td><td class='{css}'>{html.escape(status)}</td><td>{prefix}{_num(shown['best_layer'])}</td>"
            f"<td class='num'>{shown['best_coef']:+.3g}</td><td class='num'>{shown['grid_coef']:+g}</td>"
            f"<td class='num'>{_num(shown['effect'])}</td><td class='num'>{shown['delta']:+.3f}</td><td>{sides}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _values_table(values: Mapping[str, float]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class='num'>{_num(v)}</td></tr>" for k, v in values.items())
    return f"<table>{cells}</table>"


def _rows_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    names = list(dict.fromkeys(k for values in rows.values() for k in values))
    head = "<tr><th>layer</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td class='num'>{_num(values.get(n, math.nan))}</td>" for n in names) + "</tr>"
        for label, values in rows.items()
    )
    return f"<table>{head}{body}</table><p class='muted'>slope: mean per-item least-squares slope of log P(match) - log P(other) against the coefficient; wrong_sign: share of items whose slope is negative.</p>"


def _cells_table(baseline: CellResult, cells: Sequence[CellResult], budget: Mapping[str, float], effect: str) -> str:
    names = list(dict.fromkeys([effect, *budget, *(k for c in [baseline, *cells] for k in c.values)]))
    head = "<tr><th>layer</th><th>coef</th><th>per layer</th><th>in budget</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for c in [baseline, *cells]:
        inside = c.within(budget)
        css = "" if inside else " class='over'"
        values = "".join(f"<td class='num'>{_num(c.values.get(n, math.nan))}</td>" for n in names)
        rows.append(f"<tr{css}><td>{c.label}</td><td class='num'>{c.coef:+g}</td><td class='num'>{c.layer_coef:+.3g}</td><td>{'yes' if inside else 'no'}</td>{values}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _examples(summary: Mapping[str, Any], prompts: Sequence[str], generations: Mapping[int, Sequence[str]], cells: Sequence[CellResult], count: int) -> str:
    columns: list[tuple[str, Sequence[str]]] = []
    if 0 in generations:
        columns.append(("unsteered", generations[0]))
    for direction, choice in summary["directions"].items():
        if choice.get("best_layer") is None:
            continue
        for c in cells:
            if c.label == choice["window"] and c.coef == choice["grid_coef"] and c.index in generations:
                columns.append((f"{direction}: layer {c.label}, coef {c.coef:+g}", generations[c.index]))
    if not columns or count < 1:
        return ""
    head = "<tr><th>prompt</th>" + "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns) + "</tr>"
    rows = []
    for i, prompt in enumerate(prompts[:count]):
        texts = "".join(f"<td>{html.escape(texts[i])}</td>" for _, texts in columns)
        rows.append(f"<tr><td>{html.escape(prompt)}</td>{texts}</tr>")
    return f"<h2>Example generations</h2><table>{head}{''.join(rows)}</table>"


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
    """Write the report page (atomically) and return its path."""
    parts = [f"<h1>steering run: {html.escape(str(summary.get('name', '')))}</h1>"]
    facts = [f"task <b>{html.escape(str(summary['task']))}</b>", f"model <b>{html.escape(str(summary.get('model', '')))}</b>"]
    if summary["task"] == "sweep":
        facts += [
            f"method <b>{html.escape(str(summary['method']))}</b>",
            f"apply_to <b>{html.escape(str(summary.get('apply_to', summary.get('positions'))))}</b>",
            f"{summary['grid']['measured']} of {summary['grid']['planned']} cells",
        ]
    facts.append(f"{summary.get('runtime_s', 0):.0f} s")
    parts.append(f"<p class='muted'>{' · '.join(facts)}</p>")
    if summary.get("interrupted"):
        parts.append("<p class='bad'>The run was interrupted: these results cover the cells measured before it stopped.</p>")
    if summary["task"] == "sweep":
        budget = ", ".join(f"{k} ≤ {v:g}" for k, v in summary["budget"].items()) or "none"
        parts.append(f"<h2>Choice</h2><p>Effect <b>{html.escape(summary['effect'])}</b>; side-effect budget: {budget}.</p>")
        parts.append(_choices(summary))
        statuses = {c["status"] for c in summary["directions"].values()}
        if statuses and "ok" not in statuses:
            parts.append(
                "<p class='bad'>No cell steers this behaviour within the budget: the effect stays within "
                f"{summary.get('min_delta', 0):g} of the unsteered value (or every cell breaks the budget). "
                "The behaviour does not steer with this vector on this model at these layers and coefficients.</p>"
            )
        if summary.get("rows"):
            parts.append("<h2>Per layer, across coefficients</h2>" + _rows_table(summary["rows"]))
        parts.append("<h2>Unsteered</h2>" + _values_table(summary["baseline"]))
        if "letter_balance" in summary:
            balance = ", ".join(f"{k}: {v:.3f}" for k, v in summary["letter_balance"].items())
            parts.append(f"<p>Unsteered answer balance (share of P per answer letter): <b>{balance}</b>.</p>")
    else:
        best = summary.get("best_layer")
        parts.append(f"<h2>Result</h2><p>Best probe layer: <b>{_num(best)}</b>.</p>")
    parts.append("<h2>Figures</h2>" + "".join(_image(p, caption) for p, caption in figures))
    if generations:
        parts.append(_examples(summary, prompts, generations, cells, examples))
    if baseline is not None and cells:
        parts.append("<h2>Every cell</h2>" + _cells_table(baseline, cells, summary["budget"], summary["effect"]))
    if summary["task"] == "probe":
        parts.append("<h2>Per layer</h2>" + _values_table({f"layer {k} {n}": v for k, vals in summary["layers"].items() for n, v in vals.items()}))
    parts.append(f"<h2>summary.json</h2><pre>{html.escape(json.dumps(summary, indent=1, default=str))}</pre>")
    parts.append(f"<h2>Config</h2><pre>{html.escape(config_yaml)}</pre>")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>steering run {html.escape(str(summary.get('name', '')))}</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    return atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"), suffix=".html")
