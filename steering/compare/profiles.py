"""Behaviour profiles: compare models by what steering does to them, not by cosine.

Two models' activation spaces are unrelated, so their vectors have no cosine.
What can be compared is the *effect* each behaviour's steering has on each
model (e.g. the change in a behaviour score at the chosen layer and
coefficient): a profile is ``{behaviour: effect}`` for one model, and two
models are similar when their profiles correlate over the behaviours both
were measured on.

Profile JSON (one model per file)::

    {"model": "smollm2-135m-instruct",
     "effects": {"sentiment": 0.24, "formality": 0.11, "refusal": 0.02},
     "metric": "delta generation_score at best cell"}     # optional, free text

A JSON file may also hold a list of such objects. `load_profiles` also reads
``steering run`` folders (see `profile_from_run`): one run per behaviour,
runs of one model merged into one profile.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hooks import SteeringError


class ProfileError(SteeringError, ValueError):
    """A behaviour profile that cannot be read or used."""


@dataclass(frozen=True)
class BehaviourProfile:
    """Effect of steering each behaviour on one model.

    Example:
        >>> BehaviourProfile("smollm2", {"sentiment": 0.24, "formality": 0.11}).effects["sentiment"]
        0.24
    """

    model: str
    effects: Mapping[str, float]
    metric: str = ""
    sources: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ProfileError(f"a profile needs a model name, got {self.model!r}")
        clean: dict[str, float] = {}
        for name, value in self.effects.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProfileError(f"profile {self.model!r}: effect of {name!r} must be a finite number, got {value!r}")
            clean[str(name)] = float(value)
        if not clean:
            raise ProfileError(f"profile {self.model!r} has no effects")
        object.__setattr__(self, "effects", clean)


def _from_obj(obj: Any, where: str) -> BehaviourProfile:
    if not isinstance(obj, dict) or not isinstance(obj.get("effects"), dict) or "model" not in obj:
        raise ProfileError(f"{where}: expected an object with 'model' (string) and 'effects' ({{behaviour: number}})")
    try:
        return BehaviourProfile(str(obj["model"]), obj["effects"], str(obj.get("metric", "")), (where,))
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def profile_from_run(run_dir: str | Path) -> tuple[str, str, float, str]:
    """``(model, behaviour, effect, metric)`` from one ``steering run`` folder.

    Reads the folder's ``summary.json``: ``model``; the behaviour is
    ``behaviour`` if present, else the stem of ``data`` (``sentiment``,
    ``/x/refusal.jsonl`` -> ``refusal``). The effect is the chosen cell's
    value of the run's effect metric (``effect`` names it) minus its value
    at coef 0 (``best_values[effect] - baseline[effect]``), or the value
    itself where the run has no baseline (probe runs). A hand-written
    summary may instead give ``effect`` as a number.

    Raises:
        ProfileError: naming the file and what is missing (e.g. a sweep that
            found no cell within its side-effect budget).
    """
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    summary = _read_json(path, missing=f"{run_dir}: not a run folder (no summary.json)")
    if not isinstance(summary, dict):
        raise ProfileError(f"{path}: expected a JSON object")
    model = summary.get("model")
    behaviour = summary.get("behaviour") or (Path(str(summary["data"])).stem if summary.get("data") else None)
    for key, value in (("model", model), ("behaviour' or 'data", behaviour)):
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{path}: no usable '{key}' field")
    effect = summary.get("effect")
    if isinstance(effect, (int, float)) and not isinstance(effect, bool):
        return str(model), str(behaviour), float(effect), str(summary.get("metric", ""))
    if not isinstance(effect, str):
        raise ProfileError(f"{path}: field 'effect' must name the effect metric (or be a number), got {effect!r}")
    best = summary.get("best_values")
    if not isinstance(best, dict) or not isinstance(best.get(effect), (int, float)):
        raise ProfileError(f"{path}: no chosen cell with a value of {effect!r} (best_values is {best!r}); was any cell within budget?")
    baseline = summary.get("baseline") or {}
    if isinstance(baseline.get(effect), (int, float)):
        return str(model), str(behaviour), float(best[effect]) - float(baseline[effect]), f"{effect}: chosen cell minus coef 0"
    return str(model), str(behaviour), float(best[effect]), f"{effect} at the chosen layer"


def load_profiles(paths: Iterable[str | Path]) -> list[BehaviourProfile]:
    """Profiles from JSON files and/or run folders; run folders of one model merge into one profile.

    Example:
        >>> profiles = load_profiles(["smollm2.json", "qwen.json"])  # doctest: +SKIP
    """
    profiles: list[BehaviourProfile] = []
    runs: dict[str, dict[str, Any]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            model, behaviour, effect, metric = profile_from_run(path)
            entry = runs.setdefault(model, {"effects": {}, "sources": [], "metric": metric})
            if behaviour in entry["effects"]:
                raise ProfileError(f"{path}: a second run for model {model!r} and behaviour {behaviour!r} (first: {entry['sources']})")
            entry["effects"][behaviour] = effect
            entry["sources"].append(str(path))
            continue
        data = _read_json(path, missing=f"{path}: no such profile file or run folder")
        items = data if isinstance(data, list) else [data]
        profiles.extend(_from_obj(obj, f"{path}" + (f" item {k}" if isinstance(data, list) else "")) for k, obj in enumerate(items))
    for model, entry in runs.items():
        profiles.append(BehaviourProfile(model, entry["effects"], entry["metric"], tuple(entry["sources"])))
    models = [p.model for p in profiles]
    duplicates = sorted({m for m in models if models.count(m) > 1})
    if duplicates:
        raise ProfileError(f"several profiles for model(s) {duplicates}; give one profile per model")
    return profiles


def _read_json(path: Path, *, missing: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(missing) from None
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")  # fewer than 3 shared behaviours, or a flat profile: undefined
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1, 1))


def compare_profiles(profiles: Sequence[BehaviourProfile]) -> dict[str, Any]:
    """Correlate behaviour profiles across models.

    Returns ``{"models", "behaviours", "effects" [m, b] (NaN = not measured),
    "pearson" [m, m], "spearman" [m, m], "n_shared" [m, m]}``; a correlation
    needs at least 3 shared behaviours and non-constant effects, else NaN.

    Example:
        >>> res = compare_profiles([p_smollm, p_qwen])  # doctest: +SKIP
        >>> res["pearson"][0, 1]  # doctest: +SKIP
    """
    if len(profiles) < 1:
        raise ProfileError("no profiles given")
    models = [p.model for p in profiles]
    behaviours = sorted({b for p in profiles for b in p.effects})
    effects = np.array([[p.effects.get(b, np.nan) for b in behaviours] for p in profiles], dtype=np.float64)
    from scipy.stats import rankdata  # scipy.stats is slow to import; only here

    m = len(profiles)
    pearson, spearman = np.full((m, m), np.nan), np.full((m, m), np.nan)
    shared = np.zeros((m, m), dtype=np.int64)
    for i in range(m):
        for j in range(m):
            both = ~np.isnan(effects[i]) & ~np.isnan(effects[j])
            shared[i, j] = int(both.sum())
            x, y = effects[i, both], effects[j, both]
            pearson[i, j] = _corr(x, y)
            spearman[i, j] = _corr(rankdata(x), rankdata(y)) if len(x) else float("nan")
    return {"models": models, "behaviours": behaviours, "effects": effects, "pearson": pearson, "spearman": spearman, "n_shared": shared}
