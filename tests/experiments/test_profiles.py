"""Run folders of `steering run` turned into behaviour profiles (experiments.profiles)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steering.compare import ProfileError
from steering.experiments.profiles import load_profiles, profile_from_run


def test_load_profiles_from_json_and_runs(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps({"model": "smollm2", "effects": {"sentiment": 0.4, "formality": 0.1}, "metric": "delta"}))
    (tmp_path / "many.json").write_text(json.dumps([{"model": "qwen", "effects": {"sentiment": 0.2}}]))
    # Run folders as `steering run` writes them: the effect metric's name, the chosen cell's values, the coef-0 baseline.
    for behaviour, best, base in (("sentiment", 0.85, 0.55), ("refusal", 0.2, 0.3)):
        run = tmp_path / f"run_{behaviour}"
        run.mkdir()
        summary = {
            "task": "sweep",
            "model": "gemma",
            "data": f"/data/{behaviour}.jsonl",
            "effect": "score",
            "best_layer": 12,
            "best_coef": 4.0,
            "best_values": {"score": best, "neutral_ppl": 1.1},
            "baseline": {"score": base, "neutral_ppl": 1.0},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    profiles = load_profiles([tmp_path / "one.json", tmp_path / "many.json", tmp_path / "run_sentiment", tmp_path / "run_refusal"])
    by_model = {p.model: p for p in profiles}
    assert by_model["smollm2"].effects == {"sentiment": 0.4, "formality": 0.1} and by_model["smollm2"].metric == "delta"
    assert by_model["qwen"].effects == {"sentiment": 0.2}
    assert by_model["gemma"].effects == pytest.approx({"sentiment": 0.3, "refusal": -0.1})
    assert len(by_model["gemma"].sources) == 2 and by_model["gemma"].metric == "score: chosen cell minus coef 0"
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "summary.json").write_text(
        json.dumps(
            {"task": "probe", "model": "m", "data": "truthfulness", "effect": "probe_accuracy", "best_values": {"probe_accuracy": 0.9}}
        )
    )
    assert profile_from_run(probe) == ("m", "truthfulness", 0.9, "probe_accuracy at the chosen layer")
    with pytest.raises(ProfileError, match=r"a second measurement for model 'gemma' and behaviour 'sentiment'"):
        load_profiles([tmp_path / "run_sentiment", tmp_path / "run_sentiment"])


def test_run_folder_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ProfileError, match="run: not a run folder"):
        load_profiles([run])
    (run / "summary.json").write_text(json.dumps({"model": "m", "behaviour": "x", "best_layer": 3}))
    with pytest.raises(ProfileError, match=r"summary.json: field 'effect' must name the effect metric"):
        load_profiles([run])
    (run / "summary.json").write_text(
        json.dumps({"model": "m", "data": "x", "effect": "score", "best_values": None, "baseline": {"score": 0.5}})
    )
    with pytest.raises(ProfileError, match=r"no chosen cell with a value of 'score'.*within budget"):
        load_profiles([run])
    (run / "summary.json").write_text(json.dumps({"effect": 0.3, "data": "x"}))
    with pytest.raises(ProfileError, match=r"no usable 'model' field"):
        load_profiles([run])
    (run / "summary.json").write_text("{")
    with pytest.raises(ProfileError, match=r"summary.json:1: invalid JSON"):
        load_profiles([run])
