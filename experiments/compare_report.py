"""``report.html`` for ``steering compare``: every plot, and the numbers as tables.

The page has inline CSS and no scripts or remote resources. Images and data
files are linked by bare file name, relative to the report, and only files
this run wrote are linked; ``embed_images=True`` inlines the PNGs as data URIs
so that the HTML file alone is the whole report.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vectors import atomic_write

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 7px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.best td{background:#eaf6ea;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.note{color:#555;font-size:13px}.warn{color:#a33}pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:12px}
.scroll{overflow-x:auto}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, left: int = 1, best: set[int] | None = None) -> str:
    head = "".join(f"<th class='l'>{_e(h)}</th>" if k < left else f"<th>{_e(h)}</th>" for k, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f"<td class='l'>{_num(v)}</td>" if k < left else f"<td>{_num(v)}</td>" for k, v in enumerate(row))
        body.append(f"<tr class='best'>{cells}</tr>" if best and r in best else f"<tr>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _layers_text(layers: Sequence[int]) -> str:
    """``[1,2,3,5]`` -> ``1-3, 5``."""
    parts: list[str] = []
    for layer in sorted(layers):
        if parts and layer == parts[-1][1] + 1:
            parts[-1] = (parts[-1][0], layer)  # type: ignore[assignment]
        else:
            parts.append((layer, layer))  # type: ignore[arg-type]
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)  # type: ignore[misc]


class _Page:
    def __init__(self, out: Path, figures: Mapping[str, Path], embed: bool) -> None:
        self.out, self.figures, self.embed, self.parts = out, figures, embed, []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def image(self, key: str, alt: str) -> None:
        path = self.figures.get(key)
        if path is None or not Path(path).is_file():
            return
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
        else:
            src = html.escape(Path(path).name, quote=True)
        self.add(f"<p><img src='{src}' alt='{_e(alt)}'></p>")


def _vectors_section(page: _Page, res: Mapping[str, Any]) -> None:
    info = res["vectors"]
    in_sample = res.get("in_sample", {})
    rows = []
    for name, meta in info.items():
        source = meta.get("source_format", "steering")
        rows.append([name, meta["model"], meta["method"], meta["site"], meta.get("read", meta.get("position")), meta["n_pairs"], _layers_text(meta["layers"]), source, in_sample.get(name, "–")])
    page.add("<h2>Vectors</h2>")
    page.add(_table(["name", "model", "method", "site", "read", "pairs", "layers", "from", "AUROC in-sample"], rows, left=8))
    if any(m["model"] == "unknown" for m in info.values()):
        page.add("<p class='warn'>Some vectors do not record their model (imported from another tool without <code>foreign.model_id</code>); they are compared on the assumption that they come from the same model as the others (hidden sizes match).</p>")


def _cosine_section(page: _Page, res: Mapping[str, Any]) -> None:
    names, cosine = res["names"], res["cosine"]
    if len(names) < 2 or not cosine:
        return
    page.add("<h2>Cosine similarity between vectors</h2><p class='note'>Cosine of the vectors' directions at each layer they share (1 = same direction, -1 = opposite, 0 = orthogonal).</p>")
    page.image("cosine_heatmaps", "cosine heatmaps")
    page.image("cosine_over_layers", "cosine across layers")
    layers = sorted(cosine)
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            values = [cosine[layer][i, j] for layer in layers]
            if not all(np.isnan(values)):
                rows.append([f"{names[i]} / {names[j]}", *values])
    page.add(_table(["pair \\ layer", *layers], rows))


def _layers_section(page: _Page, res: Mapping[str, Any]) -> None:
    sims = res["layer_similarity"]
    page.add("<h2>Direction through depth</h2><p class='note'>Cosine of each vector's direction at one layer with its direction at another: a bright block means the direction stays the same across those layers.</p>")
    page.image("layer_similarity", "layer x layer similarity")
    rows = []
    for name, data in sims.items():
        m, layers = data["matrix"], data["layers"]
        adjacent = [m[k, k + 1] for k in range(len(layers) - 1)]
        rows.append([name, _layers_text(layers), float(np.nanmean(adjacent)) if adjacent else None, float(np.nanmin(m)) if len(layers) > 1 else None, m[0, -1] if len(layers) > 1 else None])
    page.add(_table(["vector", "layers", "mean cosine, adjacent layers", "lowest cosine", "first vs last layer"], rows, left=2))
    page.add("<h2>Norms</h2>")
    page.image("norms", "norms per layer")
    norms = res["norms"]
    layers = sorted({i for by in norms.values() for i in by})
    page.add(_table(["layer", *norms], [[layer, *[norms[n].get(layer) for n in norms]] for layer in layers]))


def _separation_section(page: _Page, res: Mapping[str, Any]) -> None:
    if "separation" not in res:
        return
    sep, best = res["separation"], res["best_layers"]
    page.add(f"<h2>Separation: AUROC per layer</h2><p class='note'>Examples: <b>{_e(res['activation_source'])}</b> ({len(res['labels'])} activations). "
             "AUROC of the projection onto each vector: the chance that a positive example projects higher than a negative one (0.5 = chance).</p>")
    if any(res["in_sample"].values()):
        flagged = ", ".join(n for n, v in res["in_sample"].items() if v)
        page.add(f"<p class='warn'>In-sample: {_e(flagged)} {'was' if ',' not in flagged else 'were'} extracted from these very pairs, so their AUROC is optimistic. Evaluate on held-out pairs for an honest number.</p>")
    page.image("auroc", "AUROC per layer")
    page.add(_table(["vector", "best layer", "AUROC there"], [[n, layer, value] for n, (layer, value) in best.items()]))
    layers = sorted({i for by in sep.values() for i in by})
    page.add(_table(["layer", *sep], [[layer, *[sep[n].get(layer) for n in sep]] for layer in layers]))
    page.add(f"<h2>Activations at layers {_e(', '.join(map(str, res['plot_layers'])))}</h2>")
    for method in res["embeddings"]:
        page.image(f"scatter_{method}", f"{method} scatter")
    page.image("projections", "projection histograms")


def _analogy_section(page: _Page, res: Mapping[str, Any]) -> None:
    rows = res.get("analogies") or []
    if not rows:
        return
    page.add("<h2>Analogies</h2><p class='note'>Each vector scaled to unit length; candidates ranked by cosine with a - b + c (the three inputs are not candidates).</p>")
    page.add(_table(["layer", "a - b + c", "expected", "nearest", "cosine", "expected's cosine", "expected's rank", "hit"],
                    [[r["layer"], r["query"], r["expected"], r["nearest"], r["nearest_cosine"], r["expected_cosine"], r["expected_rank"], r["hit"]] for r in rows], left=4))


def _interpolation_section(page: _Page, res: Mapping[str, Any]) -> None:
    interp = res.get("interpolation")
    if not interp:
        return
    page.add(f"<h2>Interpolation: (1 - t) {_e(interp['a'])} + t {_e(interp['b'])}</h2>"
             f"<p class='note'>Steered at coef {interp['coef']:g} at layer(s) {_e(_layers_text(interp['layers']))} on {len(interp['prompts'])} prompts; mean score of the generations (one standard deviation shaded).</p>")
    page.image("interpolation", "interpolation")
    scorers = list(interp["scores"])
    page.add(_table(["t", *scorers], [[t, *[interp["scores"][s][k] for s in scorers]] for k, t in enumerate(interp["ts"])]))
    first = interp["prompts"][0]
    page.add(f"<p class='note'>First prompt: <i>{_e(first)}</i></p>")
    page.add(_table(["t", "generation"], [[t, texts[0]] for t, texts in zip(interp["ts"], interp["texts"])], left=2))


def _profiles_section(page: _Page, res: Mapping[str, Any]) -> None:
    prof = res.get("profiles")
    if not prof:
        return
    page.add("<h2>Behaviour profiles across models</h2><p class='note'>Vectors of different models have no cosine; "
             "models are compared by the effect steering each behaviour has on them, correlated over shared behaviours (at least 3 needed).</p>")
    page.image("profiles", "behaviour profiles")
    page.add(_table(["model", *prof["behaviours"]], [[m, *prof["effects"][i]] for i, m in enumerate(prof["models"])]))
    models = prof["models"]
    page.add(_table(["models", "Pearson", "Spearman", "shared behaviours"],
                    [[f"{a} / {b}", prof["pearson"][i, j], prof["spearman"][i, j], prof["n_shared"][i, j]] for i, a in enumerate(models) for j, b in enumerate(models) if i < j]))


def write_report(out: Path, res: Mapping[str, Any], figures: Mapping[str, Path], files: Sequence[Path], *, config: str = "", embed_images: bool = False) -> Path:
    """Write ``out/report.html`` for the comparison ``res``; returns its path.

    Args:
        out: the output folder (figures and files must be in it).
        res: results of `steering.compare.compare_vectors` (plus ``interpolation``/``profiles``).
        figures: plot key -> PNG path, as from ``write_plots``.
        files: data files written (linked from the report).
        config: the resolved config as YAML, shown at the end.
        embed_images: inline the PNGs as data URIs.
    """
    page = _Page(out, figures, embed_images)
    title = "Behaviour vector comparison"
    page.add(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head><body><h1>{title}</h1>")
    if res.get("names"):
        page.add(f"<p>{len(res['names'])} vectors, layers {_e(_layers_text(res['layers']))}.</p>")
        _vectors_section(page, res)
        _cosine_section(page, res)
        _layers_section(page, res)
        _separation_section(page, res)
        _analogy_section(page, res)
        _interpolation_section(page, res)
    _profiles_section(page, res)
    links = [p for p in files if Path(p).is_file() and Path(p).parent.resolve() == out.resolve()]
    if links:
        items = "".join(f"<li><a href='{html.escape(Path(p).name, quote=True)}'>{_e(Path(p).name)}</a></li>" for p in sorted(links, key=lambda p: Path(p).name))
        page.add(f"<h2>Data files</h2><ul>{items}</ul>")
    if config:
        page.add(f"<h2>Config</h2><pre>{_e(config)}</pre>")
    page.add("</body></html>")
    text = "\n".join(page.parts)
    return atomic_write(out / "report.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))
