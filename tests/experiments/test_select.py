"""Choosing cells under a budget, planning the grid, and the files written per cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from steering.experiments.results import AXES, COLUMNS, CellResult, MetricsWriter, read_metrics
from steering.experiments.schema import ConfigError
from steering.experiments.select import choose
from steering.experiments.summary import write_summary
from steering.experiments.sweep import plan_windows

BUDGET = {"neutral_ppl": 1.3, "kl": 0.3}


def cell(index: int, layer: int, coef: float, effect: float, ppl: float, kl: float, window: int = 1) -> CellResult:
    layers = tuple(range(layer, layer + window))
    label = str(layer) if window == 1 else f"{layer}-{layer + window - 1}"
    return CellResult(index, label, layers, coef, coef / window, {"sentiment": effect, "neutral_ppl": ppl, "kl": kl})


BASE = CellResult(0, "baseline", (), 0.0, 0.0, {"sentiment": 0.4, "neutral_ppl": 1.0, "kl": 0.0})


def test_best_cell_within_budget_each_way() -> None:
    cells = [
        cell(1, 6, 4.0, 0.95, 1.6, 0.5),  # strongest, but over budget
        cell(2, 6, 2.0, 0.70, 1.1, 0.1),
        cell(3, 9, 2.0, 0.80, 1.2, 0.2, window=3),  # best in budget
        cell(4, 6, -2.0, 0.10, 1.2, 0.29),
        cell(5, 9, -2.0, 0.05, 1.31, 0.1),  # ppl just over
        cell(6, 9, -4.0, -0.50, 2.0, 0.9),
    ]
    choice = choose(cells, BASE, "sentiment", BUDGET, min_delta=0.02)
    on, off = choice["positive"], choice["negative"]
    assert on["status"] == "ok" and on["best_layer"] == [9, 10, 11] and on["best_coef"] == pytest.approx(2 / 3)
    assert on["grid_coef"] == 2.0 and on["delta"] == pytest.approx(0.4) and on["within_budget"]
    assert on["side_effects"] == {"neutral_ppl": 1.2, "kl": 0.2}
    assert off["status"] == "ok" and off["best_layer"] == 6 and off["best_coef"] == -2.0
    assert off["effect"] == pytest.approx(0.10)


def test_no_cell_within_budget_is_said_and_closest_named() -> None:
    cells = [cell(1, 6, 4.0, 0.9, 1.5, 0.5), cell(2, 6, 8.0, 0.95, 3.0, 1.5), cell(3, 6, -4.0, 0.0, 1.2, 0.2)]
    choice = choose(cells, BASE, "sentiment", BUDGET, min_delta=0.02)
    assert choice["positive"]["status"] == "no cell within budget"
    assert choice["positive"]["best_layer"] is None and choice["positive"]["best_coef"] is None
    assert choice["positive"]["closest"]["grid_coef"] == 4.0
    assert choice["negative"]["status"] == "ok"


def test_flat_behaviour_is_reported_as_no_effect() -> None:
    cells = [cell(1, 6, 2.0, 0.405, 1.0, 0.01), cell(2, 6, -2.0, 0.41, 1.0, 0.01)]
    choice = choose(cells, BASE, "sentiment", BUDGET, min_delta=0.02)
    assert choice["positive"]["status"] == "no effect within budget"
    assert choice["negative"]["status"] == "no effect within budget"  # it went up, not down
    assert choice["negative"]["delta"] == pytest.approx(0.01)


def test_unswept_direction_and_unmeasured_budget_values() -> None:
    cells = [cell(1, 6, 2.0, 0.9, 1.0, 0.01)]
    assert choose(cells, BASE, "sentiment", BUDGET, 0.02)["negative"]["status"] == "not swept"
    blind = CellResult(1, "6", (6,), 2.0, 2.0, {"sentiment": 0.9})
    assert not blind.within(BUDGET)  # a budgeted value that was not measured never passes
    nan = CellResult(1, "6", (6,), 2.0, 2.0, {"sentiment": 0.9, "neutral_ppl": math.nan, "kl": 0.0})
    assert not nan.within(BUDGET)


def test_plan_windows() -> None:
    assert plan_windows(6, [0, 2], [1]) == [(0,), (2,)]
    assert plan_windows(6, [0, 2], [1, 3]) == [(0,), (2,), (0, 1, 2), (2, 3, 4)]
    assert plan_windows(3, None, [2]) == [(0, 1), (1, 2)]
    with pytest.raises(ConfigError, match=r"sweep.layers has 4 with sweep.window=3"):
        plan_windows(6, [4], [3])


def test_metrics_rows_are_on_disk_before_the_writer_closes(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    writer = MetricsWriter(path)
    writer.cell(cell(1, 6, 2.0, 0.7, 1.1, 0.1))
    rows = read_metrics(path)  # read while still open: flushed per cell
    assert [r["metric"] for r in rows] == ["sentiment", "neutral_ppl", "kl"]
    assert rows[0]["layer"] == "6" and rows[0]["coef"] == 2.0 and rows[0]["value"] == 0.7
    writer.aggregate("6", [6], {"slope": 0.5})
    writer.close()
    again = MetricsWriter(path)  # appending keeps one header
    again.cell(BASE, like=cell(1, 6, 2.0, 0.7, 1.1, 0.1))
    again.close()
    text = path.read_text().splitlines()
    assert text[0] == ",".join(COLUMNS) and sum(line == text[0] for line in text) == 1
    rows = read_metrics(path)
    assert rows[3]["coef"] is None and rows[3]["metric"] == "slope"
    assert rows[-1]["layer"] == "6" and rows[-1]["cell"] == 0
    assert tuple(rows[-1][k] for k in AXES) == ("", "add", "all", "none")  # the row's axes
    assert rows[3]["mode"] == ""  # an aggregate without axes


def test_summary_json_has_no_nan(tmp_path: Path) -> None:
    path = write_summary(tmp_path / "summary.json", {"a": math.nan, "b": [1.0, math.inf], "c": {"d": 2.0}})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2.0}}


def test_load_choices_refuses_runs_without_a_choice(tmp_path: Path) -> None:
    import steering as st
    from steering.experiments.summary import load_choices

    with pytest.raises(st.SteeringError, match="has no summary.json"):
        load_choices(tmp_path)
    write_summary(tmp_path / "summary.json", {"task": "probe", "best_layer": 3})
    with pytest.raises(st.SteeringError, match="task is 'probe'"):
        load_choices(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(st.SteeringError, match="invalid JSON"):
        load_choices(tmp_path)


# --------------------------------------------------------------------------- adaptive grid, Pareto front (issue 14)


def test_refinement_bisects_where_the_budget_binds() -> None:
    from steering.experiments.sweep import next_coefs

    row = [cell(1, 8, 2.0, 0.6, 1.1, 0.1), cell(2, 8, 4.0, 0.8, 1.6, 0.5), cell(3, 8, -2.0, 0.1, 1.5, 0.4), cell(4, 8, -4.0, 0.0, 2.0, 0.9)]
    assert next_coefs(row, BUDGET) == [3.0, -1.0]  # between +2 (in) and +4 (out); below -2 when -2 is already out
    row += [cell(5, 8, 3.0, 0.7, 1.2, 0.2), cell(6, 8, -1.0, 0.2, 1.2, 0.2)]
    assert next_coefs(row, BUDGET) == [3.5, -1.5]
    inside = [cell(1, 8, 2.0, 0.6, 1.1, 0.1), cell(2, 8, -2.0, 0.2, 1.1, 0.1)]
    assert next_coefs(inside, BUDGET) == []  # nothing binds: the grid's strongest cells are in budget


def test_depth_fractions_adapt_the_window_starts_to_the_model() -> None:
    from steering.experiments.sweep import depth_starts

    assert depth_starts(30, [0.25, 0.33, 0.45], [1, 4]) == [8, 10, 14]
    assert depth_starts(18, [0.25, 0.33, 0.45], [1, 4]) == [4, 6, 8]
    assert depth_starts(4, [0.5, 0.9], [2]) == [2]  # clipped so the widest window fits, repeats dropped
    with pytest.raises(ConfigError, match="sweep.depth has 1.0"):
        depth_starts(30, [1.0], [1])


def test_pareto_front_keeps_cells_nothing_beats_on_both() -> None:
    from steering.experiments.select import excess, pareto_front

    cells = [
        cell(1, 8, 2.0, 0.5, 1.1, 0.1),  # use 0.85 (ppl), gain 0.1
        cell(2, 8, 4.0, 0.7, 1.2, 0.2),  # use 0.92, gain 0.3
        cell(3, 9, 2.0, 0.45, 1.25, 0.25),  # use 0.96, gain 0.05: beaten by cell 2
        cell(4, 9, 4.0, 0.9, 2.6, 0.6),  # use 2.0, gain 0.5
        cell(5, 9, -2.0, 0.1, 1.1, 0.1),
    ]
    assert excess(cells[0], BUDGET) == pytest.approx(1.1 / 1.3)
    assert pareto_front(cells, BASE, "sentiment", BUDGET, 1.0) == [1, 2, 4]
    assert pareto_front(cells, BASE, "sentiment", BUDGET, -1.0) == [5]


def test_swap_letters_swaps_option_texts_and_answers() -> None:
    from steering.vectors import ContrastPair, DatasetError, swap_letters

    pair = ContrastPair("(A", "(B", "Would you?\n\nChoices:\n (A) Yes, gladly\n (B) No")
    swapped = swap_letters(pair)
    assert swapped == ContrastPair("(B", "(A", "Would you?\n\nChoices:\n (A) No\n (B) Yes, gladly")
    assert swap_letters(swapped) == pair
    with pytest.raises(DatasetError, match="needs one '\\(A\\)' and one '\\(B\\)'"):
        swap_letters(ContrastPair("(A", "(B", "No options here"))


def test_letter_counts_only_for_ab_pairs() -> None:
    from steering.experiments.summary import letter_counts
    from steering.vectors import ContrastPair

    ab = [ContrastPair("(A", "(B", "q"), ContrastPair("(B", "(A", "q"), ContrastPair("(A", "(B", "q")]
    assert letter_counts(ab) == {"A": 2, "B": 1}
    assert letter_counts([ContrastPair("happy", "sad", "q")]) is None
