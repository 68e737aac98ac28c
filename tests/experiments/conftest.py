"""Fixtures for experiment tests: a tiny model saved to disk, small data files, the shared CAA data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_resources import shared_data
from tiny_models import save_tiny

QUESTIONS = [
    "Is the sky blue on a clear day?",
    "Do fish live in water?",
    "Is fire cold to the touch?",
    "Can a dog write a poem?",
    "Is Paris in France?",
    "Do birds have feathers?",
    "Is the sea made of sand?",
    "Does the sun rise in the east?",
    "Is ice warm?",
    "Do trees grow leaves?",
    "Is music a kind of food?",
    "Can people walk?",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer saved as a Hugging Face folder."""
    return save_tiny(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def caa_dir() -> Path:
    """The CAA datasets in ``../shared/data/caa`` beside the repository (skipped locally, failed in CI when absent)."""
    return shared_data("caa", "test", "sycophancy", "test_dataset_ab.json").parents[2]


@pytest.fixture(scope="session")
def ab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CAA-format A/B file (JSON list) with matching letters on both A and B."""
    items = []
    for i, question in enumerate(QUESTIONS):
        match, other = ("(A)", "(B)") if i % 2 == 0 else ("(B)", "(A)")
        items.append(
            {
                "question": f"{question}\n\nChoices:\n (A) Yes\n (B) No",
                "answer_matching_behavior": match,
                "answer_not_matching_behavior": other,
            }
        )
    path = tmp_path_factory.mktemp("caa") / "ab.json"
    path.write_text(json.dumps(items, indent=1))
    return path
