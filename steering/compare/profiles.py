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

A JSON file may also hold a list of such objects. Effects measured one at a
time (a `Measurement` each, e.g. one ``steering run`` folder per behaviour:
``experiments.profiles`` reads those) merge into one profile per model.
This module knows no run-folder layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from steering.hooks import SteeringError


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


class Measurement(NamedTuple):
    """One behaviour's steering effect on one model, measured on its own (``source`` says where)."""

    model: str
    behaviour: str
    effect: float
    metric: str = ""
    source: str = ""


def merge_measurements(measurements: Iterable[Measurement]) -> list[BehaviourProfile]:
    """One profile per model from single measurements (the first one's ``metric`` names the profile's).

    Raises:
        ProfileError: a second measurement of the same model and behaviour.
    """
    merged: dict[str, dict[str, Any]] = {}
    for m in measurements:
        entry = merged.setdefault(m.model, {"effects": {}, "sources": [], "metric": m.metric})
        if m.behaviour in entry["effects"]:
            raise ProfileError(
                f"{m.source}: a second measurement for model {m.model!r} and behaviour {m.behaviour!r} (first: {entry['sources']})"
            )
        entry["effects"][m.behaviour] = m.effect
        entry["sources"].append(m.source)
    return [BehaviourProfile(model, e["effects"], e["metric"], tuple(e["sources"])) for model, e in merged.items()]


def load_profiles(paths: Iterable[str | Path], measurements: Iterable[Measurement] = ()) -> list[BehaviourProfile]:
    """Profiles from JSON files, plus those `merge_measurements` makes of ``measurements``; one per model.

    Example:
        >>> profiles = load_profiles(["smollm2.json", "qwen.json"])  # doctest: +SKIP

    Raises:
        ProfileError: a missing or invalid file, naming it, or two profiles of one model.
    """
    profiles: list[BehaviourProfile] = []
    for raw in paths:
        path = Path(raw)
        data = read_json(path, missing=f"{path}: no such profile file")
        items = data if isinstance(data, list) else [data]
        profiles.extend(_from_obj(obj, f"{path}" + (f" item {k}" if isinstance(data, list) else "")) for k, obj in enumerate(items))
    profiles.extend(merge_measurements(measurements))
    models = [p.model for p in profiles]
    duplicates = sorted({m for m in models if models.count(m) > 1})
    if duplicates:
        raise ProfileError(f"several profiles for model(s) {duplicates}; give one profile per model")
    return profiles


def read_json(path: Path, *, missing: str) -> Any:
    """The JSON in ``path``; `ProfileError` with ``missing`` where there is no such file, or naming the bad line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
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
