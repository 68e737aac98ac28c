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


def test_load_profiles_from_json_and_measurements(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps({"model": "smollm2", "effects": {"sentiment": 0.4, "formality": 0.1}, "metric": "delta"}))
    (tmp_path / "many.json").write_text(json.dumps([{"model": "qwen", "effects": {"sentiment": 0.2}}]))
    measured = [sc.Measurement("gemma", "sentiment", 0.3, "score", "a"), sc.Measurement("gemma", "refusal", -0.1, "other", "b")]
    profiles = sc.load_profiles([tmp_path / "one.json", tmp_path / "many.json"], measured)
    by_model = {p.model: p for p in profiles}
    assert by_model["smollm2"].effects == {"sentiment": 0.4, "formality": 0.1} and by_model["smollm2"].metric == "delta"
    assert by_model["qwen"].effects == {"sentiment": 0.2}
    assert by_model["gemma"].effects == {"sentiment": 0.3, "refusal": -0.1}
    assert by_model["gemma"].sources == ("a", "b") and by_model["gemma"].metric == "score"
    with pytest.raises(ProfileError, match=r"b: a second measurement for model 'gemma' and behaviour 'sentiment'"):
        sc.merge_measurements([measured[0], measured[0]._replace(source="b")])


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
    with pytest.raises(ProfileError, match=r"several profiles for model\(s\) \['m'\]"):
        sc.load_profiles([tmp_path / "a.json"], [sc.Measurement("m", "y", 1.0)])
    with pytest.raises(ProfileError, match="missing.json: no such profile file"):
        sc.load_profiles([tmp_path / "missing.json"])
    with pytest.raises(ProfileError, match="no such profile file"):
        sc.load_profiles([tmp_path])  # a folder: the library reads no run folders (experiments.profiles does)
    (tmp_path / "bad.json").write_text('{"model": "m",\n "effects": {oops}}')
    with pytest.raises(ProfileError, match=r"bad.json:2: invalid JSON"):
        sc.load_profiles([tmp_path / "bad.json"])


def test_library_does_not_know_run_folders() -> None:
    # The CLI's run layout (summary.json) is read in experiments/ only: steering/ never names it.
    root = Path(__file__).resolve().parents[2] / "steering"
    assert not [p for p in root.rglob("*.py") if "summary.json" in p.read_text(encoding="utf-8")]
