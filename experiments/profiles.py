"""Behaviour profiles from ``steering run`` folders: the CLI's run layout turned into the library's type.

`steering.compare.profiles` compares `BehaviourProfile` values and reads
profile JSON files; it knows nothing of run folders. Here each run folder's
``summary.json`` becomes one `Measurement` (one behaviour on one model), and
`load_profiles` merges them with any profile files given alongside.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from steering.compare import BehaviourProfile, Measurement, ProfileError
from steering.compare import load_profiles as load_profile_files
from steering.compare.profiles import read_json

from .summary import SUMMARY


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
    path = run_dir / SUMMARY
    summary = read_json(path, missing=f"{run_dir}: not a run folder (no {SUMMARY})")
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
    """Profiles from profile JSON files and/or run folders; run folders of one model merge into one profile.

    Raises:
        ProfileError: see `profile_from_run` and `steering.compare.load_profiles`.
    """
    files: list[Path] = []
    runs: list[Measurement] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            runs.append(Measurement(*profile_from_run(path), source=str(path)))
        else:
            files.append(path)
    return load_profile_files(files, runs)
