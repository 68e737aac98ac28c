"""``summary.json``: what a run found, and reading a run's choice back.

A sweep's summary names, for behaviour on (``positive``) and off
(``negative``), the chosen cell over every grid axis: ``best_layer`` (an int,
or the list of layers of a window), ``best_coef`` (the coefficient applied at
each of those layers), ``method`` and ``self_pairs`` (and their ``vector``
file), ``mode`` and ``apply_to``, so ``steer(model, vec.select(layers), coef=best_coef,
mode=mode, apply_to=apply_to)`` reproduces the cell; its values and side effects.
The top-level ``best_layer``/``best_coef`` repeat the positive direction's.
Beside them: ``prompting`` (the prompting cells, described as chosen cells
are, with ``steering_beats_prompting`` per direction), ``pareto`` (per
direction, the cells on the effect / budget-use front, `select.pareto_front`,
over every axis), ``by_axes`` (per method / mode / apply_to / self_pairs of the grid, each
direction's best cell within budget and whether it lies on that front),
for A/B runs ``letter_balance`` (unsteered answer shares),
``extraction_letters`` and ``test_letters`` (the matching letters of the
pairs the vector was extracted from and of the scored test items),
``letter_effects`` (per direction within budget, the change of ``p_match``
over the items matching each letter, and whether every letter moved the
chosen way) and ``steers``: whether a direction is ``ok`` and moves the items
of every letter its way, so that a vector which only shifts the answer letter
does not count as steering the behaviour.
Non-finite numbers are written as ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import steering as st
from steering.compare import to_jsonable
from steering.vectors import atomic_write

from .metrics import choice_values
from .results import AXES, CellResult, axis_label
from .select import DIRECTIONS, choose, describe, excess, pareto_front
from .sweep import SweepResult, as_list, grid_axes, vector_keys

SUMMARY = "summary.json"
VECTOR = "vector.safetensors"


def vector_file(keys: list[tuple[str, str]], key: tuple[str, str]) -> str:
    """The file of the vector of ``key`` (``(method, self_pairs)``, one of `sweep.vector_keys`'s ``keys``) in a run folder.

    `VECTOR` for the first key; after it ``vector-<method>.safetensors`` when
    only methods vary, ``vector-<method>-self_pairs-<value>.safetensors`` when the data does.
    """
    if key == keys[0]:
        return VECTOR
    methods, data = ({k[i] for k in keys} for i in (0, 1))
    parts = ([key[0]] if len(methods) > 1 else []) + ([f"self_pairs-{key[1]}"] if len(data) > 1 else [])
    return f"vector-{'-'.join(parts)}.safetensors"


def vector_name(keys: list[tuple[str, str]], key: tuple[str, str]) -> str:
    """How the summary's ``vectors`` names the vector of ``key``: its method, then ``self_pairs=<value>`` when the data varies."""
    return key[0] if len({k[1] for k in keys}) == 1 else f"{key[0]} {axis_label('self_pairs', key[1])}"


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as JSON, atomically, with NaN/inf as ``null``."""
    text = json.dumps(to_jsonable(summary), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".json")


def _common(cfg: DictConfig, runtime: float) -> dict[str, Any]:
    return {
        "name": str(cfg.name),
        "task": str(cfg.task),
        "model": str(cfg.model.name),
        "data": str(cfg.data.path),
        "seed": int(cfg.seed),
        "runtime_s": round(runtime, 1),
    }


def letter_counts(pairs: list[st.ContrastPair]) -> dict[str, int] | None:
    """How often each answer letter is the matching one, for A/B pairs (``None`` for other pairs)."""
    letters = [p.positive.strip().lstrip("(") for p in pairs]
    if not pairs or not all(p.prompt and p.positive.strip().startswith("(") and len(letter) == 1 for p, letter in zip(pairs, letters)):
        return None
    return {letter: letters.count(letter) for letter in sorted(set(letters))}


def _prompting(result: SweepResult, directions: dict[str, Any], effect: str, budget: dict[str, float]) -> dict[str, Any]:
    assert result.baseline is not None
    out: dict[str, Any] = {}
    for direction, sign in DIRECTIONS.items():
        cells = [c for c in result.prompting if sign * c.coef > 0]
        if not cells:
            continue
        shown = describe(cells[0], result.baseline, effect, budget)
        chosen = directions[direction]
        if chosen.get("best_layer") is not None:
            shown["steering_beats_prompting"] = bool(sign * chosen["delta"] > sign * shown["delta"])
        out[direction] = shown
    return out


def letter_effects(directions: dict[str, Any], baseline: dict[str, float]) -> dict[str, Any]:
    """Per ``ok`` direction, the change of ``p_match_<X>`` per letter X and whether each has the direction's sign."""
    out: dict[str, Any] = {}
    for direction, sign in DIRECTIONS.items():
        chosen = directions.get(direction, {})
        if chosen.get("status") != "ok":
            continue
        values = chosen.get("values") or {}
        deltas = {
            k.removeprefix("p_match_"): float(values[k]) - float(v) for k, v in baseline.items() if k.startswith("p_match_") and k in values
        }
        out[direction] = {"deltas": deltas, "consistent": bool(deltas) and all(sign * d > 0 for d in deltas.values())}
    return out


def sweep_summary(
    cfg: DictConfig,
    result: SweepResult,
    runtime: float,
    letters: dict[str, int] | None = None,
    test_letters: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The summary of a sweep (see module docs); ``letters`` / ``test_letters``: `letter_counts` of the extraction pairs / test items."""
    effect = str(cfg.metric.effect)
    budget = {str(k): float(v) for k, v in cfg.budget.items()}
    axes = grid_axes(cfg)
    keys = vector_keys(cfg)
    summary = _common(cfg, runtime)
    summary.update(
        method=axes["method"][0],
        site=str(cfg.sweep.site),
        apply_to=as_list(cfg.sweep.apply_to)[0],
        effect=effect,
        budget=budget,
        min_delta=float(cfg.select.min_delta),
        vector=VECTOR,
        vectors={vector_name(keys, k): vector_file(keys, k) for k in keys},
        interrupted=result.interrupted,
        grid={
            "rows": list(dict.fromkeys(c.label for c in result.cells)),
            "axes": axes,
            "coefs": [float(c) for c in cfg.sweep.coefs],
            "mode_coefs": {m: [float(c) for c in cfg.sweep.mode_coefs[m]] for m in axes["mode"] if m in cfg.sweep.mode_coefs},
            "planned": result.planned,
            "measured": len(result.cells) + len(result.prompting) + (result.baseline is not None),
        },
    )
    if result.baseline is None:
        summary.update(best_layer=None, best_coef=None, directions={}, baseline={})
        return summary
    directions = choose(result.cells, result.baseline, effect, budget, float(cfg.select.min_delta))
    for choice in directions.values():
        if choice.get("method"):
            choice["vector"] = vector_file(keys, (choice["method"], choice["self_pairs"]))
    positive = directions["positive"]
    summary.update(
        best_layer=positive.get("best_layer"),
        best_coef=positive.get("best_coef"),
        best_values=positive.get("values"),
        side_effects=positive.get("side_effects"),
        directions=directions,
        baseline=dict(result.baseline.values),
    )
    if result.prompting:
        summary["prompting"] = _prompting(result, directions, effect, budget)
        summary["instructions"] = {str(k): str(v) for k, v in cfg.data.instructions.items()}
    grid_budget = {k: v for k, v in budget.items() if k not in choice_values(cfg)}
    summary["pareto"] = {d: pareto_front(result.cells, result.baseline, effect, grid_budget, sign) for d, sign in DIRECTIONS.items()}
    summary["by_axes"] = by_axes(result.cells, result.baseline, effect, budget, grid_budget, summary["pareto"], float(cfg.select.min_delta))
    shares = {k.removeprefix("share_"): v for k, v in result.baseline.values.items() if k.startswith("share_")}
    if shares:
        summary["letter_balance"] = shares
        effects = letter_effects(directions, dict(result.baseline.values))
        summary["letter_effects"] = effects
        summary["steers"] = any(e["consistent"] for e in effects.values())
    if letters is not None:
        summary["extraction_letters"] = letters
    if test_letters is not None:
        summary["test_letters"] = test_letters
    if result.rows:
        summary["rows"] = result.rows
    if result.layers:
        summary["layers"] = {str(k): v for k, v in sorted(result.layers.items())}
    return summary


def by_axes(
    cells: list[CellResult],
    baseline: CellResult,
    effect: str,
    budget: dict[str, float],
    grid_budget: dict[str, float],
    fronts: dict[str, list[int]],
    min_delta: float,
) -> list[dict[str, Any]]:
    """Where each (method, mode, apply_to, self_pairs) of the grid lies: per direction its best cell within budget and its front cells.

    Each entry has ``method``, ``mode``, ``apply_to``, ``self_pairs``, ``cells`` (how many) and per
    direction ``status``, ``cell``, ``window``, ``grid_coef``, ``delta`` (change
    of the effect), ``budget_use`` (`select.excess` on the grid's budget) and
    ``on_front`` (the cells of this group on the Pareto front of all cells).
    """
    out = []
    for key in dict.fromkeys(c.axes for c in cells):
        group = [c for c in cells if c.axes == key]
        entry: dict[str, Any] = {**dict(zip(AXES, key, strict=True)), "cells": len(group)}
        indices = {c.index for c in group}
        for direction, pick in choose(group, baseline, effect, budget, min_delta).items():
            shown: dict[str, Any] = {"status": pick["status"], "on_front": [i for i in fronts[direction] if i in indices]}
            if pick.get("cell") is not None:
                best = next(c for c in group if c.index == pick["cell"])
                shown.update(
                    cell=best.index, window=best.label, grid_coef=best.coef, delta=pick["delta"], budget_use=excess(best, grid_budget)
                )
            entry[direction] = shown
        out.append(entry)
    return out


def probe_summary(cfg: DictConfig, per_layer: dict[int, dict[str, float]], runtime: float) -> dict[str, Any]:
    """The summary of a probe run: the layer with the best held-out accuracy (AUROC breaks ties)."""
    summary = _common(cfg, runtime)
    best = max(per_layer, key=lambda i: (per_layer[i]["probe_accuracy"], per_layer[i]["probe_auroc"], -i)) if per_layer else None
    summary.update(
        method=str(cfg.method.name),
        effect="probe_accuracy",
        budget={},
        best_layer=best,
        best_coef=None,
        best_values=per_layer.get(best) if best is not None else None,
        layers={str(k): v for k, v in sorted(per_layer.items())},
    )
    return summary


def condition_summary(
    cfg: DictConfig, per_layer: dict[int, dict[str, float]], condition: dict[str, Any], sizes: dict[str, int], runtime: float
) -> dict[str, Any]:
    """The summary of a condition run: the chosen condition point and the gate's held-out figures per layer."""
    summary = _common(cfg, runtime)
    layer = int(condition["layer"])
    summary.update(
        effect="condition_held_out_accuracy",
        budget={},
        condition=condition,
        best_layer=layer,
        best_coef=None,
        best_values=per_layer[layer],
        **sizes,
        layers={str(k): v for k, v in sorted(per_layer.items())},
    )
    return summary


@dataclass(frozen=True)
class Choice:
    """A run's chosen steering for one direction, ready for ``steering.steer``."""

    direction: str
    vector: st.SteeringVector
    coef: float
    apply_to: str
    label: str
    mode: str = "add"


def load_condition(run_dir: str | Path, model: Any = None, *, allow_model_mismatch: bool = False) -> Any:
    """The `steering.Condition` a ``task=condition`` run folder chose (``summary.json`` + ``condition.safetensors``).

    Raises:
        SteeringError: a folder without them, or a summary that is not a condition run's.
    """
    folder = Path(run_dir)
    path = folder / "summary.json"
    if not path.is_file():
        raise st.SteeringError(f"condition={folder}: no summary.json (give the folder of a steering run experiment=condition_point)")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if summary.get("task") != "condition":
        raise st.SteeringError(f"condition={folder}: summary.json is a {summary.get('task')!r} run's, not a condition run's")
    chosen = summary["condition"]
    vector = st.SteeringVector.load(folder / str(chosen["vector"]), model, allow_model_mismatch=allow_model_mismatch)
    return st.Condition(vector, int(chosen["layer"]), float(chosen["threshold"]), bool(chosen["above"]))


def load_choices(run_dir: str | Path, model: Any = None, *, allow_model_mismatch: bool = False) -> list[Choice]:
    """The chosen cells of a sweep's run folder (directions without one are left out).

    Raises:
        VectorFileError / SteeringError: a folder without ``summary.json`` or
            the vector, a summary that is not a sweep's, or no direction with a choice.
    """
    folder = Path(run_dir)
    path = folder / SUMMARY
    if not path.is_file():
        raise st.SteeringError(f"{folder} is a folder but has no {SUMMARY}; pass a run folder of `steering run` or a .safetensors file")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise st.SteeringError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if summary.get("task") != "sweep":
        raise st.SteeringError(f"{path}: task is {summary.get('task')!r}; only sweep runs choose a layer and coef")
    loaded: dict[str, st.SteeringVector] = {}
    choices = []
    for direction, choice in summary.get("directions", {}).items():
        layer = choice.get("best_layer")
        if layer is None:
            continue
        layers = [layer] if isinstance(layer, int) else list(layer)
        # Runs before the method/mode/apply_to axes name one vector and apply_to for the whole run.
        name = str(choice.get("vector", summary.get("vector", VECTOR)))
        if name not in loaded:
            loaded[name] = st.SteeringVector.load(folder / name, model, allow_model_mismatch=allow_model_mismatch)
        choices.append(
            Choice(
                direction,
                loaded[name].select(layers),
                float(choice["best_coef"]),
                str(choice.get("apply_to") or summary.get("apply_to", summary.get("positions"))),
                str(choice["window"]),
                str(choice.get("mode") or "add"),
            )
        )
    if not choices:
        statuses = ", ".join(f"{d}: {c.get('status')}" for d, c in summary.get("directions", {}).items())
        raise st.SteeringError(f"{path}: no direction has a chosen cell ({statuses or 'no cells measured'})")
    return choices
