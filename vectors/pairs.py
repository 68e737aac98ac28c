"""Contrastive pairs and the files they come from.

A pair holds two completions that differ only in the behaviour, plus an
optional prompt they answer. Two file formats are read:

- JSONL, one object per line: ``{"prompt"?: str, "positive": str, "negative": str}``;
- CAA-style A/B items (a JSON list, or JSONL): ``{"question": str,
  "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}``.
  The question becomes the prompt and the completion is the answer letter
  without its closing bracket (``"(A"``), so the last token read is the letter,
  as in CAA.

Every malformed item is reported as ``file:line: reason``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.hooks import SteeringError


class DatasetError(SteeringError, ValueError):
    """A dataset file that cannot be read as contrastive pairs."""


@dataclass(frozen=True)
class ContrastPair:
    """Two completions that differ only in the behaviour; ``positive`` shows it."""

    positive: str
    negative: str
    prompt: str | None = None


def read_pairs(path: str | Path) -> list[ContrastPair]:
    """Read contrastive pairs from a JSONL or CAA-style JSON file.

    Raises:
        DatasetError: naming ``file:line`` and the reason, for a missing file, bad
            JSON, a missing or non-string field, or a file with no pairs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such dataset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None

    stripped = text.lstrip()
    if stripped.startswith("["):
        # A JSON list (CAA's files): line numbers are not kept by json, so the
        # item index names the culprit.
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        located = [(f"{path}: item {i}", item) for i, item in enumerate(items)]
    else:
        located = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None

    pairs = [_parse_item(where, item) for where, item in located]
    if not pairs:
        raise DatasetError(f"{path}: no pairs in file")
    return pairs


def _parse_item(where: str, item: Any) -> ContrastPair:
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}")
    if "positive" in item or "negative" in item:
        prompt = item.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise DatasetError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
        return ContrastPair(_text(where, item, "positive"), _text(where, item, "negative"), prompt)
    if "answer_matching_behavior" in item:
        question = _text(where, item, "question")
        return ContrastPair(
            positive=_answer(_text(where, item, "answer_matching_behavior")),
            negative=_answer(_text(where, item, "answer_not_matching_behavior")),
            prompt=question,
        )
    raise DatasetError(
        f"{where}: expected fields 'positive' and 'negative' (or CAA's 'question', "
        f"'answer_matching_behavior', 'answer_not_matching_behavior'), got {sorted(item)}"
    )


def _text(where: str, item: dict[str, Any], field: str) -> str:
    if field not in item:
        raise DatasetError(f"{where}: missing field {field!r}")
    value = item[field]
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DatasetError(f"{where}: field {field!r} is empty")
    return value


def _answer(answer: str) -> str:
    # "(A)" -> "(A": the letter is the last token read, as in CAA.
    answer = answer.strip()
    return answer[:-1] if answer.startswith("(") and answer.endswith(")") else answer


_OPTION = re.compile(r"^(\s*)\(([AB])\)(.*)$", re.MULTILINE)


def swap_letters(pair: ContrastPair) -> ContrastPair:
    r"""An A/B pair with the texts of options (A) and (B) swapped, and its answer letters with them.

    Extracting from each item and its swap balances the answer letter, so a
    direction cannot carry "A vs B" instead of the behaviour.

    Raises:
        DatasetError: the prompt lacks an "(A)" or a "(B)" option line (one each).

    Example:
        >>> swap_letters(ContrastPair("(A", "(B", "Q?\n\nChoices:\n (A) Yes\n (B) No")).prompt
        'Q?\n\nChoices:\n (A) No\n (B) Yes'
    """
    options = _OPTION.findall(pair.prompt or "")
    if sorted(letter for _, letter, _ in options) != ["A", "B"]:
        raise DatasetError(f"cannot swap the letters of {(pair.prompt or '')[:60]!r}: it needs one '(A)' and one '(B)' option line")
    texts = {letter: text for _, letter, text in options}
    prompt = _OPTION.sub(lambda m: f"{m.group(1)}({m.group(2)}){texts['B' if m.group(2) == 'A' else 'A']}", pair.prompt or "")

    def swap(answer: str) -> str:
        return re.sub(r"^(\s*\()([AB])", lambda m: m.group(1) + ("B" if m.group(2) == "A" else "A"), answer)

    return ContrastPair(swap(pair.positive), swap(pair.negative), prompt)


def dataset_sha256(pairs: Iterable[ContrastPair]) -> str:
    """A hash of the pairs' content, recorded in vector metadata."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps([pair.prompt, pair.positive, pair.negative]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def as_pairs(items: Sequence[ContrastPair | dict[str, Any] | tuple[str, str]]) -> list[ContrastPair]:
    """Accept pairs as `ContrastPair`, dicts or ``(positive, negative)`` tuples."""
    out: list[ContrastPair] = []
    for i, item in enumerate(items):
        if isinstance(item, ContrastPair):
            out.append(item)
        elif isinstance(item, dict):
            out.append(_parse_item(f"pairs[{i}]", item))
        elif isinstance(item, tuple) and len(item) == 2 and all(isinstance(t, str) for t in item):
            out.append(ContrastPair(item[0], item[1]))
        else:
            raise DatasetError(f"pairs[{i}]: expected a ContrastPair, dict or (positive, negative) tuple")
    if not out:
        raise DatasetError("no pairs given")
    return out
