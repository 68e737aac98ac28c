"""Real models and shared evaluation data in tests: skip locally when missing, fail in CI.

A developer machine may lack the weights packages or ``../shared/data``; there a test
that needs them is skipped with the fix in the reason. CI (``CI=true``) is set up to
have both, so a missing one means a broken setup and must turn the build red instead
of quietly skipping every real-model test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI clones the repository into some folder with a copy of shared/ beside it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def in_ci() -> bool:
    """Whether ``CI`` is set to a true value (GitHub Actions and most CIs set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the current test with ``reason``; under ``CI=true`` fail it instead."""
    if in_ci():
        pytest.fail(f"{reason}\n(CI=true: a missing real model or data set is an error, not a skip)", pytrace=False)
    pytest.skip(reason)


def load_real_model(name: str) -> tuple[Any, Any]:
    """``steering.load_model(name)``, or `missing` with its install hint when that fails."""
    import steering as st

    try:
        return st.load_model(name)
    except st.ModelLoadError as exc:  # the message names the pip command that fixes it
        missing(str(exc))


def shared_data(*parts: str) -> Path:
    """``../shared/data/<parts>`` beside the repository, or `missing` when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(f"{path} not found: evaluation data is expected in shared/data beside the repository (see shared/data/SOURCES.md)")
    return path
