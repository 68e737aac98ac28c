"""Choose the best cell for each direction, subject to the side-effect budget.

Behaviour *on* looks at the cells with a positive coefficient and takes the
one with the highest effect value; behaviour *off* looks at the negative
ones and takes the lowest. Only cells whose budgeted values are all measured
and within their limits compete. Each direction gets a status:

=========================  ==================================================
ok                         the best cell in budget moves the effect by at
                           least ``select.min_delta`` the intended way
no effect within budget    it does not: the vector does not steer this
                           behaviour here, or only beyond the budget
no cell within budget      every cell of that sign breaks the budget
                           (``closest`` names the least-over one)
not swept                  no coefficient of that sign in the grid
=========================  ==================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .results import CellResult

DIRECTIONS = {"positive": 1.0, "negative": -1.0}
SIDE_EFFECTS = ("neutral_ppl", "kl", "distinct2", "gen_ppl")


def excess(result: CellResult, budget: Mapping[str, float]) -> float:
    """How far over budget a cell is: the largest value/limit ratio (inf if unmeasured)."""
    ratios = []
    for key, limit in budget.items():
        value = result.values.get(key, math.nan)
        ratios.append(value / limit if math.isfinite(value) and limit > 0 else math.inf)
    return max(ratios, default=0.0)


def describe(result: CellResult, baseline: CellResult, effect: str, budget: Mapping[str, float]) -> dict[str, Any]:
    """A cell as the summary shows it."""
    layers = list(result.layers)
    side_keys = [k for k in (*budget, *SIDE_EFFECTS) if k in result.values]
    value = result.values.get(effect, math.nan)
    return {
        "cell": result.index,
        "best_layer": layers[0] if len(layers) == 1 else layers,
        "best_coef": result.layer_coef,
        "grid_coef": result.coef,
        "window": result.label,
        "method": result.method,
        "mode": result.mode,
        "apply_to": result.apply_to,
        "self_pairs": result.self_pairs,
        "effect": value,
        "delta": value - baseline.values.get(effect, math.nan),
        "within_budget": result.within(budget),
        "values": dict(result.values),
        "side_effects": {k: result.values[k] for k in dict.fromkeys(side_keys)},
    }


def choose(
    cells: Sequence[CellResult],
    baseline: CellResult,
    effect: str,
    budget: Mapping[str, float],
    min_delta: float,
) -> dict[str, dict[str, Any]]:
    """The choice for each of ``positive`` (on) and ``negative`` (off); see module docs."""
    out: dict[str, dict[str, Any]] = {}
    for direction, sign in DIRECTIONS.items():
        candidates = [c for c in cells if sign * c.coef > 0 and math.isfinite(c.values.get(effect, math.nan))]
        within = [c for c in candidates if c.within(budget)]
        if not candidates:
            out[direction] = {"status": "not swept", "best_layer": None, "best_coef": None}
            continue
        if not within:
            closest = min(candidates, key=lambda c: excess(c, budget))
            out[direction] = {
                "status": "no cell within budget",
                "best_layer": None,
                "best_coef": None,
                "closest": describe(closest, baseline, effect, budget),
            }
            continue
        best = max(within, key=lambda c: sign * c.values[effect])
        chosen = describe(best, baseline, effect, budget)
        chosen["status"] = "ok" if sign * chosen["delta"] >= min_delta else "no effect within budget"
        out[direction] = {"status": chosen.pop("status"), **chosen}
    return out


def pareto_front(cells: Sequence[CellResult], baseline: CellResult, effect: str, budget: Mapping[str, float], sign: float) -> list[int]:
    """Indices of the cells of one sign that no other cell beats on both effect and side effect.

    The effect is ``sign`` x (change vs unsteered), larger is better; the side
    effect is the budget use (`excess`: the largest value/limit ratio over the
    grid's budgeted values, <= 1 inside the budget), smaller is better. Sorted by budget use.
    """
    base = baseline.values.get(effect, math.nan)
    points = [
        (excess(c, budget), sign * (c.values[effect] - base), c.index)
        for c in cells
        if sign * c.coef > 0 and math.isfinite(c.values.get(effect, math.nan)) and math.isfinite(excess(c, budget))
    ]
    front, best = [], -math.inf
    for _use, gain, index in sorted(points, key=lambda p: (p[0], -p[1])):
        if gain > best:
            front.append(index)
            best = gain
    return front
