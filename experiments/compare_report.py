"""``report.html`` for ``steering compare``: every plot, and the numbers as tables.

The page has inline CSS and no scripts or remote resources. Images and data
files are linked by bare file name, relative to the report, and only files
this run wrote are linked; ``embed_images=True`` inlines the PNGs as data URIs
so that the HTML file alone is the whole report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .html import data_uri, layers_text, write_page


def _vectors(res: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the page shows about a set of vectors (absent when only profiles were compared)."""
    info, in_sample, names = res["vectors"], res.get("in_sample", {}), res["names"]
    out: dict[str, Any] = {
        "count": len(names),
        "layers": res["layers"],
        "vector_rows": [
            [
                name,
                m["model"],
                m["method"],
                m["site"],
                m.get("read", m.get("position")),
                m["n_pairs"],
                layers_text(m["layers"]),
                m.get("source_format", "steering"),
                in_sample.get(name, "–"),
            ]
            for name, m in info.items()
        ],
        "unknown_model": any(m["model"] == "unknown" for m in info.values()),
        "cosine_rows": None,
        "separation": None,
        "interpolation": None,
    }
    cosine = res["cosine"]
    if len(names) >= 2 and cosine:
        out["cosine_layers"] = sorted(cosine)
        out["cosine_rows"] = [
            [f"{names[i]} / {names[j]}", *values]
            for i in range(len(names))
            for j in range(i + 1, len(names))
            if not all(np.isnan(values := [cosine[layer][i, j] for layer in out["cosine_layers"]]))
        ]
    depth = []
    for name, data in res["layer_similarity"].items():
        m, layers = data["matrix"], data["layers"]
        adjacent = [m[k, k + 1] for k in range(len(layers) - 1)]
        deep = len(layers) > 1
        depth.append(
            [
                name,
                layers_text(layers),
                float(np.nanmean(adjacent)) if adjacent else None,
                float(np.nanmin(m)) if deep else None,
                m[0, -1] if deep else None,
            ]
        )
    out["depth_rows"] = depth
    norms = res["norms"]
    out["norm_names"] = list(norms)
    out["norm_rows"] = [[layer, *[norms[n].get(layer) for n in norms]] for layer in sorted({i for by in norms.values() for i in by})]
    if "separation" in res:
        sep = res["separation"]
        out["separation"] = {
            "source": res["activation_source"],
            "n": len(res["labels"]),
            "in_sample": [n for n, v in res["in_sample"].items() if v],
            "best_rows": [[n, layer, value] for n, (layer, value) in res["best_layers"].items()],
            "names": list(sep),
            "layer_rows": [[layer, *[sep[n].get(layer) for n in sep]] for layer in sorted({i for by in sep.values() for i in by})],
            "plot_layers": [str(i) for i in res["plot_layers"]],
            "embeddings": list(res["embeddings"]),
        }
    out["analogy_rows"] = [
        [r["layer"], r["query"], r["expected"], r["nearest"], r["nearest_cosine"], r["expected_cosine"], r["expected_rank"], r["hit"]]
        for r in res.get("analogies") or []
    ]
    interp = res.get("interpolation")
    if interp:
        scorers = list(interp["scores"])
        out["interpolation"] = {
            "a": interp["a"],
            "b": interp["b"],
            "coef": interp["coef"],
            "layers": interp["layers"],
            "n_prompts": len(interp["prompts"]),
            "scorers": scorers,
            "score_rows": [[t, *[interp["scores"][s][k] for s in scorers]] for k, t in enumerate(interp["ts"])],
            "first_prompt": interp["prompts"][0],
            "text_rows": [[t, texts[0]] for t, texts in zip(interp["ts"], interp["texts"])],
        }
    return out


def _profiles(res: Mapping[str, Any]) -> dict[str, Any] | None:
    prof = res.get("profiles")
    if not prof:
        return None
    models = prof["models"]
    return {
        "behaviours": prof["behaviours"],
        "effect_rows": [[m, *prof["effects"][i]] for i, m in enumerate(models)],
        "pair_rows": [
            [f"{a} / {b}", prof["pearson"][i, j], prof["spearman"][i, j], prof["n_shared"][i, j]]
            for i, a in enumerate(models)
            for j, b in enumerate(models)
            if i < j
        ],
    }


def write_report(
    out: Path, res: Mapping[str, Any], figures: Mapping[str, Path], files: Sequence[Path], *, config: str = "", embed_images: bool = False
) -> Path:
    """Write ``out/report.html`` (``templates/compare_report.html.j2``) for the comparison ``res``; returns its path.

    Args:
        out: the output folder (figures and files must be in it).
        res: results of `steering.compare.compare_vectors` (plus ``interpolation``/``profiles``).
        figures: plot key -> PNG path, as from ``write_plots``.
        files: data files written (linked from the report).
        config: the resolved config as YAML, shown at the end.
        embed_images: inline the PNGs as data URIs.
    """
    images = {
        key: data_uri(path) if embed_images else Path(path).name
        for key, path in figures.items()
        if path is not None and Path(path).is_file()
    }
    links = sorted(Path(p).name for p in files if Path(p).is_file() and Path(p).parent.resolve() == out.resolve())
    return write_page(
        out / "report.html",
        "compare_report.html.j2",
        v=_vectors(res) if res.get("names") else None,
        profiles=_profiles(res),
        images=images,
        links=links,
        config=config,
    )
