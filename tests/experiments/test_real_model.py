"""One short sweep on the real SmolLM2: 2 layers x 3 coefficients, few prompts (about a minute on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.results import read_metrics
from experiments.run import compose_run, run


@pytest.mark.slow
def test_sentiment_sweep_on_smollm2(smollm2, tmp_path: Path) -> None:
    overrides = [
        "experiment=sentiment_sweep",
        f"out_dir={tmp_path}",
        "sweep.layers=[9,12]",
        "sweep.coefs=[-4,0,4]",
        "data.max_pairs=48",
        "eval.max_prompts=8",
        "eval.max_new_tokens=16",
        "eval.max_neutral=16",
        "progress=false",
    ]
    summary = run(compose_run(overrides), loaded=smollm2)
    for name in ("config.yaml", "vector.safetensors", "metrics.csv", "summary.json", "report.html"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["best_layer"] == summary["best_layer"]
    values: dict[tuple[str, float], dict[str, float]] = {}
    for row in read_metrics(tmp_path / "metrics.csv"):
        values.setdefault((row["layer"], row["coef"]), {})[row["metric"]] = row["value"]
    base = summary["baseline"]["sentiment"]
    # The sentiment vector steers SmolLM2: up with +coef, down with -coef, at a cost on neutral text.
    assert values[("12", 4.0)]["sentiment"] > base + 0.1
    assert values[("12", -4.0)]["sentiment"] < base - 0.1
    assert values[("12", -4.0)]["kl"] > values[("9", -4.0)]["kl"] > 0.0
    assert values[("12", -4.0)]["neutral_ppl"] > 1.0
    for direction in summary["directions"].values():
        assert direction["status"] in ("ok", "no effect within budget", "no cell within budget")
