"""Checks on the datasets bundled in ``steering/datasets`` (no model needed)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "steering" / "datasets"
SCRIPT = ROOT / "scripts" / "build_datasets.py"
BEHAVIOURS = ["sentiment", "formality", "refusal", "truthfulness", "confidence"]
GENERATED_FILES = [f"{b}.jsonl" for b in BEHAVIOURS] + ["neutral.txt", "sentiment_eval_prompts.txt"]


def load_generator():
    spec = importlib.util.spec_from_file_location("build_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pairs(behaviour: str) -> list[dict]:
    lines = (DATA_DIR / f"{behaviour}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_lines(filename: str) -> list[str]:
    return (DATA_DIR / filename).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_pairs_schema(behaviour):
    for pair in read_pairs(behaviour):
        assert set(pair) == {"prompt", "positive", "negative"}
        for key in ("prompt", "positive", "negative"):
            assert isinstance(pair[key], str) and pair[key].strip(), (key, pair)
        assert pair["positive"] != pair["negative"], pair


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_pairs_count_and_uniqueness(behaviour):
    pairs = read_pairs(behaviour)
    assert len(pairs) >= 150
    lines = read_lines(f"{behaviour}.jsonl")
    assert len(set(lines)) == len(lines), "duplicate lines"
    pos_neg = [(p["positive"], p["negative"]) for p in pairs]
    assert len(set(pos_neg)) == len(pos_neg), "duplicate positive/negative pairs"
    assert len({p["prompt"] for p in pairs}) >= 40


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_pairs_are_short_and_balanced(behaviour):
    for pair in read_pairs(behaviour):
        n_pos, n_neg = len(pair["positive"].split()), len(pair["negative"].split())
        assert 8 <= n_pos <= 30 and 8 <= n_neg <= 30, pair
        assert abs(n_pos - n_neg) <= 6, pair


def test_eval_prompts_are_held_out():
    eval_prompts = read_lines("sentiment_eval_prompts.txt")
    assert len(eval_prompts) >= 30
    assert all(p.strip() for p in eval_prompts)
    assert len(set(eval_prompts)) == len(eval_prompts)
    train_prompts = {p["prompt"] for p in read_pairs("sentiment")}
    assert not train_prompts & set(eval_prompts)
    # topic-level check (the generator asserts the same thing while building)
    gen = load_generator()
    gen.check_eval_prompts_held_out(read_pairs("sentiment"))


def test_neutral_sentences():
    lines = read_lines("neutral.txt")
    assert len(lines) >= 80
    assert all(line.strip() == line and line for line in lines)
    assert len(set(lines)) == len(lines)


def test_generator_reproduces_committed_files(tmp_path):
    gen = load_generator()
    gen.main(["--out", str(tmp_path)])
    for filename in GENERATED_FILES:
        committed = (DATA_DIR / filename).read_bytes()
        regenerated = (tmp_path / filename).read_bytes()
        assert regenerated == committed, f"{filename} is stale; run scripts/build_datasets.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GENERATED_FILES)


def test_sentiment_pairs_separate_under_vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # a [dev] dependency: missing is an error

    analyzer = SentimentIntensityAnalyzer()
    pairs = read_pairs("sentiment")
    pos = [analyzer.polarity_scores(p["positive"])["compound"] for p in pairs]
    neg = [analyzer.polarity_scores(p["negative"])["compound"] for p in pairs]
    assert statistics.mean(pos) - statistics.mean(neg) > 0.5
    ordered = sum(p > n for p, n in zip(pos, neg)) / len(pairs)
    assert ordered >= 0.9
