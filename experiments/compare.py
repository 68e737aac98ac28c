"""The ``compare`` command: vectors in, numbers + plots + report.html out.

Steps: load the vectors (any supported format), refuse vectors of different
models (`CrossModelError`), load the model only when activations or
interpolation need it, compute everything with `steering.compare`, then write
into ``cfg.out``:

==========================  ===============================================
``numbers.json``            every number below, plus vector metadata
``cosine.csv``              layer, a, b, cosine (each pair, each shared layer)
``layer_similarity.csv``    vector, layer_a, layer_b, cosine
``norms.csv``               vector, layer, norm
``auroc.csv``               vector, layer, auroc, in_sample (with ``data``)
``projections.csv``         layer, vector, index, label, projection (plot layers)
``embeddings.csv``          method, layer, index, label, x, y (plot layers)
``analogies.csv``           one row per analogy and layer
``interpolation.csv``       t, scorer, mean, std (+ ``interpolation_texts.json``)
``profiles.csv``            model, behaviour, effect (+ ``profile_correlation.csv``)
``*.png`` / ``report.html`` plots and the report (``plots=true``)
==========================  ===============================================
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

import steering as st
from steering import compare as sc
from steering.vectors import SteeringVector, atomic_write
from steering.vectors.interop import read_any_vector
from steering.vectors.vector import UNKNOWN

from .config import config_yaml
from .profiles import load_profiles


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return [OmegaConf.to_container(v) if isinstance(v, ListConfig) else v for v in value]
    return [value]


def vector_names(paths: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """Labels for the vector files: ``names`` if given, else the file stems (must be unique)."""
    if names:
        if len(names) != len(paths):
            raise st.SteeringError(f"names has {len(names)} entries for {len(paths)} vectors")
        labels = [str(n) for n in names]
    else:
        labels = [Path(p).stem if Path(p).suffix else Path(p).name for p in paths]
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise st.SteeringError(f"several vectors are called {duplicates}; give each a label with names=[...]")
    return labels


def load_vectors(cfg: DictConfig, model: Any = None) -> dict[str, SteeringVector]:
    """The vector files of ``cfg.vectors``, by label (checked against ``model`` if given)."""
    paths = [str(p) for p in _list(cfg.vectors)]
    labels = vector_names(paths, [str(n) for n in _list(cfg.names)] or None)
    foreign = {
        "model_id": cfg.foreign.model_id if cfg.foreign.model_id is not None else (None if model is not None else cfg.model),
        "num_layers": cfg.foreign.num_layers,
        "allow_model_mismatch": bool(cfg.foreign.allow_model_mismatch),
    }
    return {label: read_any_vector(path, model, **foreign) for label, path in zip(labels, paths)}


def _model_id(cfg: DictConfig, vectors: dict[str, SteeringVector]) -> str:
    if cfg.model is not None:
        return str(cfg.model)
    known = sorted({v.model for v in vectors.values() if v.model != UNKNOWN})
    if len(known) != 1:
        found = f"they record {known}" if known else "none records its model"
        raise st.SteeringError(f"this comparison needs a model and {found}; pass model=<name or folder>")
    return known[0]


def _activations(cfg: DictConfig, model: Any, tok: Any, layers: list[int]) -> sc.LabelledActivations:
    data = str(cfg.data)
    if Path(data).is_file() and sc.is_labelled_texts(data):
        texts, labels = sc.read_labelled_texts(data)
        return sc.text_activations(model, tok, texts, labels, layers, read=cfg.read, batch_size=int(cfg.batch_size), source=Path(data).name)
    pairs = st.load_pairs(data)
    return sc.pair_activations(model, tok, pairs, layers, read=cfg.read, batch_size=int(cfg.batch_size), source=Path(data).stem)


def _interpolation(cfg: DictConfig, model: Any, tok: Any, vectors: dict[str, SteeringVector]) -> dict[str, Any]:
    spec = cfg.interpolate
    if spec.b is None:
        raise st.SteeringError("interpolate.a is set but interpolate.b is not; name both vectors")
    a_name, b_name = str(spec.a), str(spec.b)
    for name in (a_name, b_name):
        if name not in vectors:
            raise st.SteeringError(f"interpolate names {name!r}, which is not among the vectors ({', '.join(vectors)})")
    a, b = vectors[a_name], vectors[b_name]
    shared = sorted(set(a.layers) & set(b.layers))
    if spec.layers is not None:
        steer_layers = sorted({int(i) for i in _list(spec.layers)})
    elif shared:
        steer_layers = [shared[len(shared) // 2]]  # one layer: steering every layer at once swamps the model
    else:
        raise st.SteeringError(f"{a_name!r} and {b_name!r} share no layer; set interpolate.layers")
    layer = int(spec.layer) if spec.layer is not None else steer_layers[0]
    scorers: dict[str, sc.Scorer] = {}
    for kind in _list(spec.scorers):
        if kind == "projection":
            scorers[f"projection on {a_name} (layer {layer})"] = sc.projection_scorer(model, tok, a, layer)
            scorers[f"projection on {b_name} (layer {layer})"] = sc.projection_scorer(model, tok, b, layer)
        elif kind == "sentiment":
            scorers["sentiment (VADER)"] = sc.sentiment_scorer()
        else:
            raise st.SteeringError(f"unknown interpolation scorer {kind!r}; choose projection or sentiment")
    prompts = st.load_lines(str(spec.prompts))[: int(spec.n_prompts)]
    result = sc.interpolate(
        model,
        tok,
        a,
        b,
        prompts,
        scorers,
        ts=[float(t) for t in spec.ts],
        coef=float(spec.coef),
        layers=steer_layers,
        max_new_tokens=int(spec.max_new_tokens),
        seed=int(cfg.seed),
    )
    return {**result, "a": a_name, "b": b_name, "prompts": prompts}


def _csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([("" if math.isnan(v) else f"{v:.10g}") if isinstance(v, float) else v for v in row])
    return atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"))


def _json(path: Path, obj: Any) -> Path:
    text = json.dumps(sc.to_jsonable(obj), indent=1, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_numbers(out: Path, res: dict[str, Any]) -> list[Path]:
    """Write the CSV and JSON files of a comparison; returns the paths written."""
    files: list[Path] = []
    names = res.get("names", [])
    if "cosine" in res:
        files.append(
            _csv(
                out / "cosine.csv",
                ["layer", "a", "b", "cosine"],
                (
                    (layer, names[i], names[j], float(m[i, j]))
                    for layer, m in res["cosine"].items()
                    for i in range(len(names))
                    for j in range(i + 1, len(names))
                    if m[i, j] == m[i, j]
                ),
            )
        )
        files.append(
            _csv(
                out / "layer_similarity.csv",
                ["vector", "layer_a", "layer_b", "cosine"],
                (
                    (name, la, lb, float(d["matrix"][i, j]))
                    for name, d in res["layer_similarity"].items()
                    for i, la in enumerate(d["layers"])
                    for j, lb in enumerate(d["layers"])
                ),
            )
        )
        files.append(
            _csv(out / "norms.csv", ["vector", "layer", "norm"], ((n, i, v) for n, by in res["norms"].items() for i, v in by.items()))
        )
    if "separation" in res:
        files.append(
            _csv(
                out / "auroc.csv",
                ["vector", "layer", "auroc", "in_sample"],
                ((n, i, a, res["in_sample"][n]) for n, by in res["separation"].items() for i, a in by.items()),
            )
        )
        labels = res["labels"]
        files.append(
            _csv(
                out / "projections.csv",
                ["layer", "vector", "index", "label", "projection"],
                (
                    (layer, n, k, int(labels[k]), float(s[k]))
                    for layer, by in res["projections"].items()
                    for n, s in by.items()
                    for k in range(len(s))
                ),
            )
        )
        files.append(
            _csv(
                out / "embeddings.csv",
                ["method", "layer", "index", "label", "x", "y"],
                (
                    (method, layer, k, int(labels[k]), float(xy[k, 0]), float(xy[k, 1]))
                    for method, by in res["embeddings"].items()
                    for layer, xy in by.items()
                    for k in range(len(xy))
                ),
            )
        )
    if res.get("analogies"):
        keys = ["layer", "query", "expected", "nearest", "nearest_cosine", "expected_cosine", "expected_rank", "hit"]
        files.append(_csv(out / "analogies.csv", keys, ([row[k] for k in keys] for row in res["analogies"])))
    if "interpolation" in res:
        interp = res["interpolation"]
        files.append(
            _csv(
                out / "interpolation.csv",
                ["t", "scorer", "mean", "std"],
                ((t, s, interp["scores"][s][k], interp["stds"][s][k]) for s in interp["scores"] for k, t in enumerate(interp["ts"])),
            )
        )
        texts = {
            "a": interp["a"],
            "b": interp["b"],
            "coef": interp["coef"],
            "prompts": interp["prompts"],
            "by_t": dict(zip(map(str, interp["ts"]), interp["texts"])),
        }
        files.append(_json(out / "interpolation_texts.json", texts))
    if "profiles" in res:
        prof = res["profiles"]
        files.append(
            _csv(
                out / "profiles.csv",
                ["model", "behaviour", "effect"],
                (
                    (m, b, float(prof["effects"][i, j]))
                    for i, m in enumerate(prof["models"])
                    for j, b in enumerate(prof["behaviours"])
                    if prof["effects"][i, j] == prof["effects"][i, j]
                ),
            )
        )
        files.append(
            _csv(
                out / "profile_correlation.csv",
                ["model_a", "model_b", "pearson", "spearman", "n_shared"],
                (
                    (a, b, float(prof["pearson"][i, j]), float(prof["spearman"][i, j]), int(prof["n_shared"][i, j]))
                    for i, a in enumerate(prof["models"])
                    for j, b in enumerate(prof["models"])
                    if i < j
                ),
            )
        )
    skip = {"labels", "projections", "embeddings"}
    summary = {k: v for k, v in res.items() if k not in skip}
    if "interpolation" in summary:
        summary["interpolation"] = {k: v for k, v in summary["interpolation"].items() if k not in ("texts", "per_text")}
    files.append(_json(out / "numbers.json", summary))
    return files


def write_plots(out: Path, res: dict[str, Any]) -> dict[str, Path]:
    """Write every PNG the results allow; returns ``{plot key: path}``."""
    from steering import plots

    made: dict[str, Path] = {}
    names = res.get("names", [])
    if res.get("cosine") and len(names) > 1:
        made["cosine_heatmaps"] = plots.cosine_heatmaps(res["cosine"], names, out / "cosine_heatmaps.png")
        made["cosine_over_layers"] = plots.cosine_over_layers(res["cosine"], names, out / "cosine_over_layers.png")
    if res.get("layer_similarity"):
        made["layer_similarity"] = plots.layer_similarity_heatmaps(res["layer_similarity"], out / "layer_similarity.png")
        made["norms"] = plots.norm_curves(res["norms"], out / "norms.png")
    if "separation" in res:
        made["auroc"] = plots.auroc_curves(
            res["separation"], out / "auroc.png", in_sample=res["in_sample"], source=res["activation_source"]
        )
        for method, by_layer in res["embeddings"].items():
            made[f"scatter_{method}"] = plots.scatter_2d(by_layer, res["labels"], out / f"scatter_{method}.png", method=method)
        made["projections"] = plots.projection_histograms(res["projections"], res["labels"], out / "projections.png")
    if "interpolation" in res:
        interp = res["interpolation"]
        made["interpolation"] = plots.interpolation_curves(interp, out / "interpolation.png", a=interp["a"], b=interp["b"])
    if "profiles" in res:
        made["profiles"] = plots.profile_heatmaps(res["profiles"], out / "profiles.png")
    return made


def compare_command(cfg: DictConfig) -> dict[str, Any]:
    """Run the comparison described by ``cfg`` (``conf/compare.yaml``); returns the results.

    Example:
        >>> compare_command(compose_config("compare", ["vectors=[a.safetensors,b.safetensors]", "out=cmp"]))  # doctest: +SKIP
    """
    out = Path(str(cfg.out))
    if out.exists() and not out.is_dir():
        raise st.SteeringError(f"out={out}: exists and is not a folder")
    paths, profile_paths = _list(cfg.vectors), _list(cfg.profiles)
    if not paths and not profile_paths:
        raise st.SteeringError("nothing to compare: give vectors=[...] and/or profiles=[...]")
    if cfg.data is not None and not paths:
        raise st.SteeringError("data= needs vectors=[...] to project onto")
    res: dict[str, Any] = {}
    if paths:
        vectors = load_vectors(cfg)
        sc.check_same_space(vectors)  # before any model is loaded: the clear cross-model error first
        needs_model = cfg.data is not None or cfg.interpolate.a is not None
        acts = None
        if needs_model:
            model, tok = st.load_model(_model_id(cfg, vectors), device=cfg.device, dtype=cfg.dtype)
            vectors = load_vectors(cfg, model)  # again, now validated against the model
            layers = sorted({int(i) for i in _list(cfg.layers)}) if cfg.layers is not None else sc.layer_union(vectors)
            if cfg.data is not None:
                acts = _activations(cfg, model, tok, layers)
        res = sc.compare_vectors(
            vectors,
            layers=[int(i) for i in _list(cfg.layers)] if cfg.layers is not None else None,
            activations=acts,
            plot_layers=[int(i) for i in _list(cfg.plot_layers)] if cfg.plot_layers is not None else None,
            embed=[str(e) for e in _list(cfg.embed)],
            analogies=[[str(n) for n in q] for q in _list(cfg.analogies)],
            seed=int(cfg.seed),
        )
        if cfg.interpolate.a is not None:
            res["interpolation"] = _interpolation(cfg, model, tok, vectors)
    if profile_paths:
        profiles = load_profiles(str(p) for p in profile_paths)
        res["profiles"] = {**sc.compare_profiles(profiles), "sources": {p.model: list(p.sources) for p in profiles}}
    out.mkdir(parents=True, exist_ok=True)
    files = write_numbers(out, res)
    if cfg.plots:
        from .compare_report import write_report

        figures = write_plots(out, res)
        files += [*figures.values(), write_report(out, res, figures, files, config=config_yaml(cfg), embed_images=bool(cfg.embed_images))]
    _print_summary(out, res, files)
    return res


def _print_summary(out: Path, res: dict[str, Any], files: list[Path]) -> None:
    print(f"wrote {len(files)} files to {out}/: {', '.join(sorted(p.name for p in files))}")
    for name, (layer, value) in res.get("best_layers", {}).items():
        tag = " (in-sample)" if res["in_sample"].get(name) else ""
        print(f"  {name}: best separation AUROC {value:.3f} at layer {layer}{tag}")
    by_query: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in res.get("analogies", []):
        by_query.setdefault((row["query"], row["expected"]), []).append(row)
    for (query, expected), rows in by_query.items():
        hits = [r["layer"] for r in rows if r["hit"]]
        print(
            f"  {query} ~ {expected}: nearest at {len(hits)} of {len(rows)} layers"
            + (f" ({', '.join(map(str, hits))})" if 0 < len(hits) <= 8 else "")
        )
