"""Behaviour profiles: the cross-model comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from steering import compare as sc
from steering.compare import BehaviourProfile, ProfileError


def test_compare_profiles_correlations() -> None:
    a = BehaviourProfile("smollm2", {"sentiment": 0.4, "formality": 0.1, "refusal": 0.05, "confidence": 0.3})
    b = BehaviourProfile("qwen", {"sentiment": 0.5, "formality": 0.3, "refusal": 0.01, "truthfulness": 0.2})
    c = BehaviourProfile("gemma", {"sentiment": 0.1, "truthfulness": 0.9})
    res = sc.compare_profiles([a, b, c])
    assert res["models"] == ["smollm2", "qwen", "gemma"]
    assert res["behaviours"] == ["confidence", "formality", "refusal", "sentiment", "truthfulness"]
    assert np.isnan(res["effects"][0, 4]) and res["effects"][1, 3] == 0.5
    shared = ["formality", "refusal", "sentiment"]
    x, y = [a.effects[s] for s in shared], [b.effects[s] for s in shared]
    assert res["n_shared"][0, 1] == 3
    assert res["pearson"][0, 1] == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert res["spearman"][0, 1] == pytest.approx(spearmanr(x, y).statistic)
    np.testing.assert_array_equal(res["pearson"], res["pearson"].T)
    assert res["pearson"][0, 0] == pytest.approx(1.0)
    assert res["n_shared"][1, 2] == 2 and np.isnan(res["pearson"][1, 2])  # fewer than 3 shared: undefined


def test_profile_validation() -> None:
    with pytest.raises(ProfileError, match="effect of 'sentiment' must be a finite number, got nan"):
        BehaviourProfile("m", {"sentiment": float("nan")})
    with pytest.raises(ProfileError, match="has no effects"):
        BehaviourProfile("m", {})
    with pytest.raises(ProfileError, match="needs a model name"):
        BehaviourProfile("", {"x": 1.0})


def test_load_profiles_from_json_and_runs(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps({"model": "smollm2", "effects": {"sentiment": 0.4, "formality": 0.1}, "metric": "delta"}))
    (tmp_path / "many.json").write_text(json.dumps([{"model": "qwen", "effects": {"sentiment": 0.2}}]))
    # Run folders as `steering run` writes them: the effect metric's name, the chosen cell's values, the coef-0 baseline.
    for behaviour, best, base in (("sentiment", 0.85, 0.55), ("refusal", 0.2, 0.3)):
        run = tmp_path / f"run_{behaviour}"
        run.mkdir()
        summary = {"task": "sweep", "model": "gemma", "data": f"/data/{behaviour}.jsonl", "effect": "score", "best_layer": 12, "best_coef": 4.0,
                   "best_values": {"score": best, "neutral_ppl": 1.1}, "baseline": {"score": base, "neutral_ppl": 1.0}}
        (run / "summary.json").write_text(json.dumps(summary))
    profiles = sc.load_profiles([tmp_path / "one.json", tmp_path / "many.json", tmp_path / "run_sentiment", tmp_path / "run_refusal"])
    by_model = {p.model: p for p in profiles}
    assert by_model["smollm2"].effects == {"sentiment": 0.4, "formality": 0.1} and by_model["smollm2"].metric == "delta"
    assert by_model["qwen"].effects == {"sentiment": 0.2}
    assert by_model["gemma"].effects == pytest.approx({"sentiment": 0.3, "refusal": -0.1})
    assert len(by_model["gemma"].sources) == 2 and by_model["gemma"].metric == "score: chosen cell minus coef 0"
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "summary.json").write_text(json.dumps({"task": "probe", "model": "m", "data": "truthfulness", "effect": "probe_accuracy", "best_values": {"probe_accuracy": 0.9}}))
    assert sc.profile_from_run(probe) == ("m", "truthfulness", 0.9, "probe_accuracy at the chosen layer")


def test_load_profiles_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"effects": {"x": 1}}))
    with pytest.raises(ProfileError, match=r"bad.json: expected an object with 'model'"):
        sc.load_profiles([tmp_path / "bad.json"])
    (tmp_path / "str.json").write_text(json.dumps({"model": "m", "effects": {"x": "big"}}))
    with pytest.raises(ProfileError, match=r"str.json: .*effect of 'x' must be a finite number, got 'big'"):
        sc.load_profiles([tmp_path / "str.json"])
    (tmp_path / "a.json").write_text(json.dumps({"model": "m", "effects": {"x": 1}}))
    with pytest.raises(ProfileError, match=r"several profiles for model\(s\) \['m'\]"):
        sc.load_profiles([tmp_path / "a.json", tmp_path / "a.json"])
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ProfileError, match="run: not a run folder"):
        sc.load_profiles([run])
    (run / "summary.json").write_text(json.dumps({"model": "m", "behaviour": "x", "best_layer": 3}))
    with pytest.raises(ProfileError, match=r"summary.json: field 'effect' must name the effect metric"):
        sc.load_profiles([run])
    (run / "summary.json").write_text(json.dumps({"model": "m", "data": "x", "effect": "score", "best_values": None, "baseline": {"score": 0.5}}))
    with pytest.raises(ProfileError, match=r"no chosen cell with a value of 'score'.*within budget"):
        sc.load_profiles([run])
    (run / "summary.json").write_text(json.dumps({"effect": 0.3, "data": "x"}))
    with pytest.raises(ProfileError, match=r"no usable 'model' field"):
        sc.load_profiles([run])
    with pytest.raises(ProfileError, match="missing.json: no such profile file"):
        sc.load_profiles([tmp_path / "missing.json"])
    (tmp_path / "bad.json").write_text('{"model": "m",\n "effects": {oops}}')
    with pytest.raises(ProfileError, match=r"bad.json:2: invalid JSON"):
        sc.load_profiles([tmp_path / "bad.json"])
    (run / "summary.json").write_text("{")
    with pytest.raises(ProfileError, match=r"summary.json:1: invalid JSON"):
        sc.load_profiles([run])
