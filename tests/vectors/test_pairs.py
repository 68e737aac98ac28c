"""Tests for vectors.pairs: reading contrastive pairs and reporting bad files precisely."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from steering.hooks import SteeringError
from steering.vectors import ContrastPair, DatasetError, as_pairs, dataset_sha256, read_pairs


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(items) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


# --------------------------------------------------------------------------- good files


def test_jsonl_without_prompt(tmp_path):
    path = _write(
        tmp_path, "p.jsonl", _jsonl([{"positive": "I love it", "negative": "I hate it"}, {"positive": "good", "negative": "bad"}])
    )
    pairs = read_pairs(path)
    assert pairs == [ContrastPair("I love it", "I hate it", None), ContrastPair("good", "bad", None)]
    assert all(p.prompt is None for p in pairs)


def test_jsonl_with_prompt_and_blank_lines(tmp_path):
    text = (
        json.dumps({"prompt": "How was it?", "positive": "Great", "negative": "Awful"})
        + "\n\n   \n"
        + json.dumps({"positive": "yes", "negative": "no"})
        + "\n"
    )
    pairs = read_pairs(_write(tmp_path, "x.jsonl", text))
    assert pairs == [ContrastPair("Great", "Awful", "How was it?"), ContrastPair("yes", "no")]


def test_read_pairs_accepts_str_path(tmp_path):
    path = _write(tmp_path, "s.jsonl", _jsonl([{"positive": "a", "negative": "b"}]))
    assert read_pairs(str(path)) == [ContrastPair("a", "b")]


def test_pair_is_frozen():
    pair = ContrastPair("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.positive = "c"  # type: ignore[misc]


def test_caa_json_list(tmp_path):
    items = [
        {"question": "Do you agree?\n(A) Yes\n(B) No", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
        {"question": "Pick one.\n(A) x\n(B) y", "answer_matching_behavior": " (B) ", "answer_not_matching_behavior": "(A)"},
    ]
    path = _write(tmp_path, "caa.json", json.dumps(items, indent=2))
    pairs = read_pairs(path)
    assert pairs[0] == ContrastPair(positive="(A", negative="(B", prompt="Do you agree?\n(A) Yes\n(B) No")
    assert pairs[1].positive == "(B" and pairs[1].negative == "(A"
    assert pairs[1].prompt == "Pick one.\n(A) x\n(B) y"


def test_caa_answer_without_brackets_kept(tmp_path):
    items = [{"question": "q", "answer_matching_behavior": "Yes", "answer_not_matching_behavior": "No"}]
    pairs = read_pairs(_write(tmp_path, "caa.json", json.dumps(items)))
    assert pairs == [ContrastPair("Yes", "No", "q")]


def test_caa_style_jsonl(tmp_path):
    items = [
        {"question": "Q1", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
        {"question": "Q2", "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"},
    ]
    pairs = read_pairs(_write(tmp_path, "caa.jsonl", _jsonl(items)))
    assert pairs == [ContrastPair("(A", "(B", "Q1"), ContrastPair("(B", "(A", "Q2")]


def test_json_list_of_plain_pairs(tmp_path):
    items = [{"prompt": "p", "positive": "a", "negative": "b"}]
    assert read_pairs(_write(tmp_path, "l.json", "  \n" + json.dumps(items))) == [ContrastPair("a", "b", "p")]


# --------------------------------------------------------------------------- as_pairs


def test_as_pairs_mixed_inputs():
    existing = ContrastPair("x", "y", "z")
    pairs = as_pairs(
        [
            existing,
            {"positive": "a", "negative": "b"},
            {"prompt": "p", "positive": "c", "negative": "d"},
            ("e", "f"),
            {"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
        ]
    )
    assert pairs == [
        existing,
        ContrastPair("a", "b"),
        ContrastPair("c", "d", "p"),
        ContrastPair("e", "f"),
        ContrastPair("(A", "(B", "q"),
    ]
    assert pairs[0] is existing


@pytest.mark.parametrize(
    "bad, needle",
    [
        (("a",), "pairs[1]"),
        (("a", "b", "c"), "pairs[1]"),
        (("a", 3), "pairs[1]"),
        (["a", "b"], "pairs[1]"),
        ("ab", "pairs[1]"),
        ({"positive": "a"}, "'negative'"),
        ({"positive": "a", "negative": 5}, "'negative'"),
    ],
)
def test_as_pairs_rejects_bad_items(bad, needle):
    with pytest.raises(DatasetError) as info:
        as_pairs([("ok", "fine"), bad])
    assert needle in str(info.value)
    assert "pairs[1]" in str(info.value)


def test_as_pairs_empty():
    with pytest.raises(DatasetError, match="no pairs"):
        as_pairs([])


def test_dataset_error_is_steering_and_value_error():
    assert issubclass(DatasetError, SteeringError) and issubclass(DatasetError, ValueError)


# --------------------------------------------------------------------------- hash


def test_dataset_sha256_stable_and_sensitive():
    a = [ContrastPair("a", "b"), ContrastPair("c", "d", "p")]
    h = dataset_sha256(a)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert dataset_sha256([ContrastPair("a", "b"), ContrastPair("c", "d", "p")]) == h  # equal content, new objects
    assert dataset_sha256(iter(a)) == h  # any iterable
    assert dataset_sha256(list(reversed(a))) != h  # order matters
    assert dataset_sha256([ContrastPair("b", "a"), a[1]]) != h  # swapping positive/negative matters
    assert dataset_sha256([ContrastPair("a", "b", ""), a[1]]) != h  # prompt None vs "" differ
    assert dataset_sha256([ContrastPair("a", "b", "p"), ContrastPair("c", "d")]) != h  # prompt moved
    assert dataset_sha256(a[:1]) != h


def test_dataset_sha256_no_field_boundary_collisions():
    assert dataset_sha256([ContrastPair("ab", "c")]) != dataset_sha256([ContrastPair("a", "bc")])
    assert dataset_sha256([ContrastPair("a", "b"), ContrastPair("c", "d")]) != dataset_sha256([ContrastPair("a", "b\nc")])


def test_dataset_sha256_same_for_file_and_list(tmp_path):
    items = [{"prompt": "p", "positive": "a", "negative": "b"}, {"positive": "c", "negative": "d"}]
    from_file = read_pairs(_write(tmp_path, "d.jsonl", _jsonl(items)))
    assert dataset_sha256(from_file) == dataset_sha256(as_pairs(items))


# --------------------------------------------------------------------------- malformed files


def _error(path: Path) -> str:
    with pytest.raises(DatasetError) as info:
        read_pairs(path)
    return str(info.value)


GOOD = json.dumps({"positive": "a", "negative": "b"})


@pytest.mark.parametrize(
    "line3, needles",
    [
        ('{"positive": "a", "negative": ', ["invalid JSON"]),
        ("not json at all", ["invalid JSON"]),
        (json.dumps({"positive": "a"}), ["missing field 'negative'"]),
        (json.dumps({"negative": "a"}), ["missing field 'positive'"]),
        (json.dumps({"positive": 3, "negative": "b"}), ["'positive'", "must be a string", "int"]),
        (json.dumps({"positive": "a", "negative": None}), ["'negative'", "must be a string"]),
        (json.dumps({"positive": ["a"], "negative": "b"}), ["'positive'", "must be a string", "list"]),
        (json.dumps({"positive": "", "negative": "b"}), ["'positive'", "empty"]),
        (json.dumps({"positive": "a", "negative": "   "}), ["'negative'", "empty"]),
        (json.dumps({"prompt": 7, "positive": "a", "negative": "b"}), ["'prompt'", "must be a string"]),
        (json.dumps(["a", "b"]), ["expected a JSON object", "list"]),
        (json.dumps("a string"), ["expected a JSON object", "str"]),
        ("42", ["expected a JSON object", "int"]),
        (json.dumps({"pos": "a", "neg": "b"}), ["expected fields 'positive' and 'negative'"]),
        (json.dumps({"question": "q", "answer_matching_behavior": "(A)"}), ["missing field 'answer_not_matching_behavior'"]),
        (json.dumps({"answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}), ["missing field 'question'"]),
        (
            json.dumps({"question": "q", "answer_matching_behavior": 1, "answer_not_matching_behavior": "(B)"}),
            ["'answer_matching_behavior'", "must be a string"],
        ),
    ],
)
def test_bad_jsonl_line_names_file_line_and_reason(tmp_path, line3, needles):
    # Line 2 is blank: line numbers must count physical lines, not items.
    path = _write(tmp_path, "bad.jsonl", GOOD + "\n\n" + line3 + "\n" + GOOD + "\n")
    message = _error(path)
    assert message.startswith(f"{path}:3: "), message
    for needle in needles:
        assert needle in message, message


def test_empty_file(tmp_path):
    path = _write(tmp_path, "empty.jsonl", "")
    message = _error(path)
    assert str(path) in message and "no pairs" in message


def test_blank_lines_only(tmp_path):
    path = _write(tmp_path, "blank.jsonl", "\n  \n\t\n")
    message = _error(path)
    assert str(path) in message and "no pairs" in message


def test_empty_json_list(tmp_path):
    path = _write(tmp_path, "empty.json", "[]")
    message = _error(path)
    assert str(path) in message and "no pairs" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.jsonl"
    message = _error(path)
    assert str(path) in message and "no such" in message


def test_directory_is_reported_as_dataset_error(tmp_path):
    message = _error(tmp_path)
    assert str(tmp_path) in message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"positive": "caf\xe9", "negative": "b"}\n')
    message = _error(path)
    assert str(path) in message and "cannot read" in message


@pytest.mark.parametrize(
    "bad_item, needles",
    [
        ({"question": "q", "answer_matching_behavior": "(A)"}, ["missing field 'answer_not_matching_behavior'"]),
        ({"question": 5, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}, ["'question'", "must be a string"]),
        ({"question": "q", "answer_matching_behavior": "", "answer_not_matching_behavior": "(B)"}, ["'answer_matching_behavior'", "empty"]),
        ("just a string", ["expected a JSON object"]),
        ({"positive": "a"}, ["missing field 'negative'"]),
    ],
)
def test_json_list_bad_item_names_item_index(tmp_path, bad_item, needles):
    good = {"question": "q", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    path = _write(tmp_path, "caa.json", json.dumps([good, good, bad_item, good], indent=2))
    message = _error(path)
    assert message.startswith(f"{path}: item 2: "), message
    for needle in needles:
        assert needle in message, message


def test_invalid_json_list_names_line(tmp_path):
    text = '[\n  {"positive": "a", "negative": "b"},\n  {"positive": "c" "negative": "d"}\n]\n'
    path = _write(tmp_path, "broken.json", text)
    message = _error(path)
    assert message.startswith(f"{path}:3: invalid JSON"), message
