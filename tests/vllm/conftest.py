"""Fixtures of the vLLM tests: the vectors folder and the held-out prompts.

Every engine start costs ~30 s on 2 cores (TP=3 ~140 s), so each test module
starts one engine (module-scoped) and runs all its checks against it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vllm_helpers import LAYERS, N_PAIRS, N_PROMPTS

import steering as st


@pytest.fixture(scope="session")
def vector_dir(smollm2, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vectors folder: ``sentiment`` (layers 10-13) and ``narrow`` (hidden size 64, does not fit)."""
    model, tok = smollm2
    folder = tmp_path_factory.mktemp("vectors")
    vec = st.extract(model, tok, st.load_pairs("sentiment")[:N_PAIRS], layers=LAYERS)
    vec.save(folder / "sentiment.safetensors")
    # A second direction for ablation and mixed batches: the refusal pairs.
    st.extract(model, tok, st.load_pairs("refusal")[:N_PAIRS], layers=LAYERS).save(folder / "refusal.safetensors")
    narrow = st.SteeringVector({3: torch.ones(64)}, hidden_size=64, num_layers=30, model="other")
    narrow.save(folder / "narrow.safetensors")
    return folder


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Held-out prompts (not in the training pairs)."""
    from importlib.resources import files

    text = files("steering.datasets").joinpath("sentiment_eval_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()][:N_PROMPTS]
