"""A table of CAA A/B runs: which behaviours steer, with the letter balance of extraction and of the answers.

    python benchmarks/caa_table.py outputs/measure/caa_smollm2 > benchmarks/results/caa-ab-smollm2-<date>.md

Reads each ``<behaviour>/summary.json`` below the folder (``steering run experiment=caa_ab``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cell(choice: dict, letters: dict | None) -> str:
    shown = choice if choice.get("best_layer") is not None else choice.get("closest")
    if not shown:
        return choice["status"]
    side = shown["side_effects"]
    text = (
        f"{choice['status']}: layer {shown['best_layer']} coef {shown['grid_coef']:+g}, "
        f"p_match {shown['effect']:.3f} ({shown['delta']:+.3f}), ppl {side.get('neutral_ppl', float('nan')):.2f}, kl {side.get('kl', float('nan')):.2f}"
    )
    if letters:  # per matching letter: a letter shift moves them apart
        text += "; by letter " + " / ".join(f"{k} {v:+.3f}" for k, v in letters["deltas"].items())
        text += "" if letters["consistent"] else " (letter shift)"
    return text


def main() -> None:
    root = Path(sys.argv[1])
    print(
        "| behaviour | extraction letters | test letters | unsteered share A / B | unsteered p_match | steers | positive (more behaviour) | negative (less) | slope per row |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in sorted(root.glob("*/summary.json")):
        s = json.loads(path.read_text())
        letters = ", ".join(f"{k} {v}" for k, v in s.get("extraction_letters", {}).items())
        tested = ", ".join(f"{k} {v}" for k, v in s.get("test_letters", {}).items()) or "not recorded"
        effects = s.get("letter_effects", {})
        shares = s.get("letter_balance", {})
        share = f"{shares.get('A', float('nan')):.2f} / {shares.get('B', float('nan')):.2f}"
        rows = ", ".join(
            f"{k}: {v.get('slope', float('nan')):+.3f} ({v.get('wrong_sign', float('nan')):.0%} wrong)"
            for k, v in s.get("rows", {}).items()
        )
        d = s["directions"]
        print(
            f"| {path.parent.name} | {letters} | {tested} | {share} | {s['baseline'].get('p_match', float('nan')):.3f} | "
            f"{'yes' if s.get('steers') else 'no'} | {_cell(d['positive'], effects.get('positive'))} | {_cell(d['negative'], effects.get('negative'))} | {rows} |"
        )


if __name__ == "__main__":
    main()
