"""``benchmarks/object_pairs.py``: the bundled object pairs file is what the generator writes, and stays clear of the prompts it is judged on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import steering as st

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks/data/sentiment_object_pairs.jsonl"


@pytest.fixture
def object_pairs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import object_pairs

    return object_pairs


def test_the_committed_file_is_the_generators_output(object_pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pairs.jsonl"
    monkeypatch.setattr(sys, "argv", ["object_pairs.py", "--check", "--out", str(out)])
    object_pairs.main()
    assert out.read_text() == DATA.read_text()


def test_pairs_differ_only_in_sentiment_words_and_name_no_search_or_check_noun(object_pairs) -> None:
    pairs = st.load_pairs(DATA)
    assert len(pairs) == len(object_pairs.NOUNS) == 100
    vocab = {w for options in object_pairs.SLOTS.values() for pair in options for phrase in pair for w in phrase.split()}
    for pair in pairs:
        a, b = pair.positive.split(), pair.negative.split()
        assert len(a) == len(b)
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert changed, pair
        assert all(x.strip(",.:;") in vocab and y.strip(",.:;") in vocab for x, y in changed), pair
    with pytest.raises(SystemExit, match="named by search or check prompts"):
        object_pairs.check(["a desk"])  # "Describe your desk at work." is a search prompt


def test_mix_alternates_with_the_bundled_pairs(object_pairs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "mix.jsonl"
    monkeypatch.setattr(sys, "argv", ["object_pairs.py", "--mix", "3", "--out", str(out)])
    object_pairs.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    bundled = st.load_pairs("sentiment")[:3]
    assert len(rows) == 103
    assert [rows[i]["prompt"] for i in (0, 2, 4)] == [p.prompt for p in bundled]
    assert [rows[i]["prompt"] for i in (1, 3, 5, 6)] == [p.prompt for p in st.load_pairs(DATA)[:4]]
