"""Both HTML reports render through one autoescaping template base: text from users is shown, never run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steering.experiments.compare_report import write_report as write_compare_report
from steering.experiments.html import layers_text, num
from steering.experiments.report import write_report as write_run_report
from steering.experiments.results import CellResult

EVIL = "<script>alert(1)</script>"


def test_compare_report_escapes_a_vector_name(tmp_path: Path) -> None:
    meta = {"model": "m", "method": "mean_diff", "site": "block_output", "position": "last", "n_pairs": 4, "layers": [1, 2]}
    res = {
        "names": [EVIL, "plain"],
        "layers": [1, 2],
        "vectors": {EVIL: meta, "plain": meta},
        "cosine": {1: np.array([[1.0, 0.5], [0.5, 1.0]])},
        "layer_similarity": {EVIL: {"matrix": np.eye(2), "layers": [1, 2]}},
        "norms": {EVIL: {1: 2.0}},
    }
    html = write_compare_report(tmp_path, res, {}, [], config=f"name: {EVIL}").read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; / plain" in html and "name: &lt;script&gt;" in html


def _sweep_summary(name: str, effect: str, min_delta: float) -> dict:
    """The fields every sweep summary has, for a one-cell report."""
    return {
        "name": name,
        "task": "sweep",
        "model": "m",
        "method": "mean_diff",
        "positions": "all",
        "runtime_s": 1.0,
        "grid": {"measured": 2, "planned": 2},
        "effect": effect,
        "budget": {"kl": 0.3},
        "min_delta": min_delta,
    }


def test_run_report_escapes_names_prompts_and_generations(tmp_path: Path) -> None:
    summary = {
        **_sweep_summary(EVIL, "score", 0.0),
        "directions": {
            EVIL: {
                "status": "ok",
                "best_layer": 1,
                "best_coef": 2.0,
                "grid_coef": 2.0,
                "effect": 0.5,
                "delta": 0.2,
                "side_effects": {"kl": 0.1},
                "window": "1",
            }
        },
        "baseline": {"score": 0.3},
    }
    base, cell = (
        CellResult(0, "coef 0", (), 0.0, 0.0, {"score": 0.3, "kl": 0.0}),
        CellResult(1, "1", (1,), 2.0, 2.0, {"score": 0.5, "kl": 0.1}),
    )
    html = write_run_report(
        tmp_path / "report.html",
        summary,
        [],
        f"name: {EVIL}",
        baseline=base,
        cells=[cell],
        prompts=[EVIL],
        generations={0: [EVIL], 1: ["fine"]},
    ).read_text()
    assert "<script>" not in html and html.count("&lt;script&gt;") >= 5
    assert "<td class='num'>+2</td>" in html and "kl 0.100" in html  # numbers formatted as before


def test_one_number_format() -> None:
    assert [num(None), num(float("nan")), num(float("inf")), num(0.12345), num(np.float32(1.0)), num(3), num(True), num([1, 2])] == [
        "–",
        "–",
        "–",
        "0.123",
        "1.000",
        "3",
        "yes",
        "1, 2",
    ]
    assert layers_text([5, 1, 2, 3]) == "1-3, 5"


def test_run_report_states_the_letters_and_a_letter_shift(tmp_path: Path) -> None:
    chosen = {
        "status": "ok",
        "best_layer": 1,
        "best_coef": 2.0,
        "grid_coef": 2.0,
        "effect": 0.55,
        "delta": 0.05,
        "side_effects": {"kl": 0.1},
    }
    summary = {
        **_sweep_summary("ab", "p_match", 0.02),
        "directions": {"positive": {**chosen, "window": "1"}},
        "baseline": {"p_match": 0.5},
        "letter_balance": {"A": 0.6, "B": 0.4},
        "letter_effects": {"positive": {"deltas": {"A": 0.2, "B": -0.1}, "consistent": False}},
        "steers": False,
        "test_letters": {"A": 27, "B": 27, "C": 4},
        "extraction_letters": {"A": 5, "B": 3},
    }
    base, cell = (
        CellResult(0, "coef 0", (), 0.0, 0.0, {"p_match": 0.5, "kl": 0.0}),
        CellResult(1, "1", (1,), 2.0, 2.0, {"p_match": 0.55, "kl": 0.1}),
    )
    html = write_run_report(tmp_path / "report.html", summary, [], "name: ab", baseline=base, cells=[cell]).read_text()
    assert "positive: A +0.200, B -0.100 <b class='bad'>letter shift, not the behaviour</b>" in html
    assert "steer the behaviour" in html and "<b class='bad'>no</b>" in html
    test_line = html[html.index("in the scored test items") :].split("</p>")[0]
    assert "A: 27, B: 27, C: 4" in test_line and "A and B unbalanced" not in test_line and "4 match a third option" in test_line
    extraction_line = html[html.index("in the extraction pairs") :].split("</p>")[0]
    assert "A and B unbalanced: the direction may carry the letter; set data.balance_letters=true" in extraction_line
